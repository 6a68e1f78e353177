// Command pause is the local cluster's sandbox ("pause") image: the upstream image is not
// reachable here, and any program that holds the pod's namespaces open until it is told to
// stop serves. It sleeps until SIGINT or SIGTERM, and as PID 1 of a pod that shares its
// process namespace it reaps orphaned children so they never linger as zombies.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
