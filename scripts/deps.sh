#!/usr/bin/env bash
# Makes sure this machine has what `make test`, `make demo` and .ci/run
# need besides Go, in the first seconds, before anything long starts:
#
#   scripts/deps.sh           as root with apt-get: installs what is
#                             missing (Debian's packages); otherwise lists
#                             what is missing, prints the command that
#                             installs it, and exits 1
#   scripts/deps.sh --check   only checks and lists; never installs
#
# What the tests need, and why:
# - gcc and libc6-dev: the race detector (cgo);
# - postgresql: the server binaries; the store tests start a throwaway
#   server of their own (internal/testpostgres);
# - docker.io and busybox-static: the node-agent e2e test starts its own
#   Docker daemon and builds an image FROM a busybox imported from the
#   package (it must be the static one: it runs in an empty image);
# - chromium: the review UI is tested in a real headless browser;
# - iproute2, runc, containernetworking-plugins, iptables, conntrack: the
#   real single-node cluster (network namespaces, the bridge, the OCI
#   runtime, kube-proxy's rules); nftables: its tear-down removes the
#   tables iptables-nft made for it;
# - docker-registry: a second, independent registry (CNCF Distribution,
#   no OCI referrers API) the provenance tests sign into with Notation and
#   the cosign CLIs, where signatures live in the referrers tag schema.
set -euo pipefail

check_only=false
case "${1:-}" in
  "") ;;
  --check) check_only=true ;;
  *) echo "usage: scripts/deps.sh [--check]" >&2; exit 2 ;;
esac

# root is prefixed to every path checked: the tests point it at a
# directory of their own, and then nothing is installed.
root=${DEPS_ROOT:-}
if [[ -n $root ]]; then
  check_only=true
fi

# have_cmd NAME: NAME is on PATH, or in the sbin directories a non-root
# PATH often lacks.
have_cmd() {
  if [[ -z $root ]] && command -v "$1" >/dev/null 2>&1; then
    return 0
  fi
  [[ -x $root/usr/sbin/$1 || -x $root/sbin/$1 || -x $root/usr/bin/$1 || -x $root/bin/$1 ]]
}

# static BINARY: BINARY has no ELF interpreter (not dynamically linked).
static() {
  [[ -x $1 ]] || return 1
  if have_cmd file; then
    file -L "$1" | grep -Eq 'statically linked|static-pie linked'
  else
    ! LC_ALL=C grep -qa -e '/ld-linux' -e '/ld-musl' "$1"
  fi
}

# have PACKAGE: what PACKAGE brings is here (checked by what the tests
# use, so that the same thing installed otherwise counts too).
have() {
  case $1 in
    gcc) have_cmd gcc ;;
    libc6-dev) [[ -e $root/usr/include/stdio.h ]] ;;
    postgresql) compgen -G "$root/usr/lib/postgresql/*/bin/postgres" >/dev/null ;;
    docker.io) have_cmd dockerd && have_cmd docker ;;
    busybox-static) static "$root/usr/bin/busybox" ;;
    chromium) [[ -x $root/usr/bin/chromium ]] ;;
    iproute2) have_cmd ip ;;
    runc) have_cmd runc ;;
    containernetworking-plugins) [[ -x $root/usr/lib/cni/bridge && -x $root/usr/lib/cni/host-local && -x $root/usr/lib/cni/loopback ]] ;;
    iptables) have_cmd iptables ;;
    conntrack) have_cmd conntrack ;;
    nftables) have_cmd nft ;;
    docker-registry) [[ -x $root/usr/bin/docker-registry ]] ;;
    *) echo "scripts/deps.sh: no check for $1" >&2; return 1 ;;
  esac
}

packages=(gcc libc6-dev postgresql docker.io busybox-static chromium iproute2 runc containernetworking-plugins iptables conntrack nftables docker-registry)

missing=()
for p in "${packages[@]}"; do
  have "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if ! $check_only && [[ $(id -u) -eq 0 ]] && have_cmd apt-get; then
  echo "scripts/deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  still=()
  for p in "${missing[@]}"; do
    have "$p" || still+=("$p")
  done
  if [[ ${#still[@]} -eq 0 ]]; then
    exit 0
  fi
  echo "scripts/deps.sh: installed, but still not found: ${still[*]}" >&2
  exit 1
fi

{
  echo "buildguard's tests and demo need Debian packages this machine does not have:"
  for p in "${missing[@]}"; do
    echo "  $p"
  done
  echo "Install them with:"
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
  echo "(or run this as root with apt-get, and it installs them). See the top of scripts/deps.sh for what needs each."
} >&2
exit 1
