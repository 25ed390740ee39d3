package nodeagent

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"buildguard.dev/buildguard/nodeagent/conns"
)

// shimContainer returns the container whose runtime shim is process ppid,
// or "". A RUN step that is a single command (`RUN wget …`) is the
// container's init process, and when it has exited before the sensor looked
// it up, neither it nor its parent's cgroup names the container; but its
// parent is containerd's shim, which lives until the container is deleted
// and names it in its command line:
//
//	containerd-shim-runc-v2 -namespace moby -id <container ID> -address …
func shimContainer(procRoot string, ppid int) string {
	if ppid <= 1 {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(ppid), "cmdline"))
	if err != nil {
		return ""
	}
	args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
	if len(args) < 3 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
		return ""
	}
	for i, a := range args[:len(args)-1] {
		if a == "-id" || a == "--id" {
			if id := args[i+1]; conns.IsContainerID(id) {
				return id
			}
		}
	}
	return ""
}
