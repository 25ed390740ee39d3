#!/usr/bin/env bash
# Builds the binaries the e2e tests and the demo need into bin/
# (git-ignored), from the pinned modules under tools/: etcd, the
# Kubernetes control plane, kubectl and helm, and for the real node
# kube-scheduler, kubelet, kube-proxy, containerd (with its runc shim and
# ctr), CoreDNS, and the pause binary of the pod sandboxes. A binary is
# rebuilt only when its module's go.mod or go.sum, or the way it is built,
# changed since it was built; docs/benchmark-results.md has the times of the
# first build. tools/build.sh NAME... builds those binaries only.
#
# It also builds the cosign CLIs the provenance tests sign with, as
# bin/cosign-v2 and bin/cosign-v3, each with its own go.mod (go install
# MODULE@VERSION): rebuilt only when the pinned version changes, ~8 minutes
# each the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
export CGO_ENABLED=0

# KUBE_VERSION is the version tools/kube pins, stamped into its binaries:
# unstamped they report v0.0.0-master+$Format:%H$, which kubectl version
# and the kubelet's node status cannot parse.
KUBE_VERSION=v1.37.2
kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"
CONTAINERD_VERSION=v2.4.2
containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"

# With arguments (tools/build.sh kubelet containerd), only those binaries.
only=("$@")
want_bin() { # want_bin NAME: whether NAME is to be built in this run
  [[ ${#only[@]} -eq 0 ]] && return 0
  local n; for n in "${only[@]}"; do [[ $n == "$1" ]] && return 0; done; return 1
}

build() { # build MODULE_DIR PACKAGE OUTPUT [LDFLAGS [TAGS]]
  local dir=$1 pkg=$2 out=bin/$3 ldflags=${4:--s -w} tags=${5:-}
  want_bin "$3" || return 0
  local stamp="$out.stamp"
  local want
  want=$( (cat "$dir/go.mod" "$dir/go.sum"; echo "$pkg $ldflags $tags") | sha256sum | cut -d' ' -f1)
  if [[ -x $out && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return
  fi
  echo "building $out from $dir ($pkg)..." >&2
  (cd "$dir" && go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "../../$out" "$pkg")
  echo "$want" > "$stamp"
}

# install_at PACKAGE@VERSION OUTPUT: go install with the package's own
# go.mod, into a temporary GOBIN, then renamed: bin/ may hold another
# binary of the same base name.
install_at() {
  local pkgver=$1 out=bin/$2
  want_bin "$2" || return 0
  local stamp="$out.stamp"
  if [[ -x $out && -f $stamp && $(cat "$stamp") == "$pkgver" ]]; then
    return
  fi
  echo "building $out ($pkgver)..." >&2
  local tmp
  tmp=$(mktemp -d)
  GOBIN=$tmp go install -trimpath -ldflags '-s -w' "$pkgver"
  mv "$tmp/$(basename "${pkgver%@*}")" "$out"
  rm -rf "$tmp"
  echo "$pkgver" > "$stamp"
}

build tools/etcd . etcd
build tools/kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$kube_ldflags"
build tools/kube k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$kube_ldflags"
build tools/kube k8s.io/kubernetes/cmd/kubectl kubectl "$kube_ldflags"
build tools/kube k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler "$kube_ldflags"
build tools/kube k8s.io/kubernetes/cmd/kubelet kubelet "$kube_ldflags"
build tools/kube k8s.io/kubernetes/cmd/kube-proxy kube-proxy "$kube_ldflags"
# btrfs needs cgo; the node uses overlayfs.
build tools/containerd github.com/containerd/containerd/v2/cmd/containerd containerd "$containerd_ldflags" no_btrfs
build tools/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 containerd-shim-runc-v2 "$containerd_ldflags" no_btrfs
build tools/containerd github.com/containerd/containerd/v2/cmd/ctr ctr "$containerd_ldflags" no_btrfs
build tools/coredns . coredns
# helm reports the version it was stamped with (chart kubeVersion checks,
# `helm version`); unstamped it would say v4.3.
build tools/helm helm.sh/helm/v4/cmd/helm helm '-s -w -X helm.sh/helm/v4/internal/version.version=v4.3.2'
install_at github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5 cosign-v2
install_at github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3 cosign-v3

# pause, the process that holds a pod sandbox's namespaces: Kubernetes's
# own pause.c, as its build/pause Makefile compiles it (static, C: the
# image it goes into has nothing else).
want_bin pause || exit 0
pause_src=$(cd tools/kube && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
want=$( (cat "$pause_src"; echo "$KUBE_VERSION") | sha256sum | cut -d' ' -f1)
if ! [[ -x bin/pause && -f bin/pause.stamp && $(cat bin/pause.stamp) == "$want" ]]; then
  command -v gcc >/dev/null || { echo "gcc is missing: apt-get install gcc libc6-dev" >&2; exit 1; }
  echo "building bin/pause from $pause_src..." >&2
  gcc -Os -Wall -Werror -static -DVERSION="v3.10.2-$KUBE_VERSION" -o bin/pause "$pause_src"
  echo "$want" > bin/pause.stamp
fi
