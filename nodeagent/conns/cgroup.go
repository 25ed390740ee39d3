package conns

import (
	"strings"
)

// maxCgroupPath bounds the cgroup path kept in a Conn.
const maxCgroupPath = 512

// parseProcCgroup reads the contents of /proc/PID/cgroup ("ID:controllers:path"
// lines, cgroup v1 and v2) and returns the cgroup path worth reporting and
// the container ID found in any line's path ("" when none).
//
// The path is the one that named the container, else the cgroup v2 ("0::")
// path, else the first v1 path that is not "/".
func parseProcCgroup(data string) (path, containerID string) {
	var v2, v1 string
	for line := range strings.SplitSeq(data, "\n") {
		hier, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		_, p, ok := strings.Cut(rest, ":")
		if !ok || !strings.HasPrefix(p, "/") {
			continue
		}
		if id := containerIDFromPath(p); id != "" {
			return boundPath(p), id
		}
		switch {
		case hier == "0" && v2 == "":
			v2 = p
		case hier != "0" && v1 == "" && p != "/":
			v1 = p
		}
	}
	if v2 != "" && v2 != "/" {
		return boundPath(v2), ""
	}
	if v1 != "" {
		return boundPath(v1), ""
	}
	return boundPath(v2), ""
}

func boundPath(p string) string {
	if len(p) > maxCgroupPath {
		return p[:maxCgroupPath]
	}
	return p
}

// containerRuntimePrefixes are the systemd scope prefixes runtimes give a
// container's cgroup: docker-<id>.scope (docker, systemd driver),
// cri-containerd-<id>.scope (containerd CRI), crio-<id>.scope (CRI-O),
// libpod-<id>.scope (podman, buildah).
var containerRuntimePrefixes = []string{"docker-", "cri-containerd-", "crio-", "libpod-", "containerd-"}

// containerIDFromPath returns the innermost 64-hex container ID named by a
// cgroup path, or "" when it names none. It accepts a bare ID segment
// (/docker/<id>, /kubepods/burstable/pod<uid>/<id>, /actions_job/<id>,
// /default/<id>) and the systemd scopes of containerRuntimePrefixes. It skips
// conmon scopes (crio-conmon-<id>.scope), which hold CRI-O's monitor, not the
// container.
func containerIDFromPath(p string) string {
	segs := strings.Split(p, "/")
	for i := len(segs) - 1; i >= 0; i-- {
		seg := segs[i]
		if IsContainerID(seg) {
			return seg
		}
		scope, ok := strings.CutSuffix(seg, ".scope")
		if !ok {
			continue
		}
		for _, prefix := range containerRuntimePrefixes {
			if id, ok := strings.CutPrefix(scope, prefix); ok && IsContainerID(id) {
				return id
			}
		}
	}
	return ""
}

// IsContainerID reports whether s is a container ID as Docker, containerd
// and CRI-O make them: 64 lower-case hex digits.
func IsContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
