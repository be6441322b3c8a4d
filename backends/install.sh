#!/usr/bin/env bash
# Installs the real servers that wayfinder's tests and examples talk to, into backends/.local
# (git-ignored):
#   - etcd 3.5 (etcd, etcdctl) from Debian trixie's etcd-server / etcd-client packages;
#   - Consul 1.8 from Debian bullseye's consul package.
# The packages are fetched with a private sources list and lists directory and unpacked with
# dpkg-deb; the system's apt sources are not touched. protoc (Debian protobuf-compiler), which
# the etcd client's build needs, is installed from the system's own sources when missing.
#
# Idempotent: a second run finds everything in place and does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
local_dir="$here/.local"
bin="$local_dir/bin"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mirror="${WAYFINDER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# Downloads Debian packages of one suite and unpacks them under .local/root.
fetch_from_suite() {
  local suite=$1
  shift
  local work="$local_dir/apt/$suite"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
  echo "deb [signed-by=$keyring] $mirror $suite main" >"$work/sources.list"
  local opts=(
    -q
    -o "Dir::Etc::sourcelist=$work/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${opts[@]}" update >/dev/null
  (cd "$work/debs" && apt-get "${opts[@]}" download "$@" >/dev/null)
  for deb in "$work/debs"/*.deb; do
    dpkg-deb -x "$deb" "$local_dir/root"
  done
}

link_binary() {
  mkdir -p "$bin"
  ln -sf "../root/usr/bin/$1" "$bin/$1"
}

if [ ! -f "$keyring" ]; then
  echo "installing Debian's archive keyring"
  apt-get update -qq && apt-get install -y -qq debian-archive-keyring >/dev/null
fi

if [ ! -x "$bin/etcd" ] || [ ! -x "$bin/etcdctl" ]; then
  echo "installing etcd 3.5 into $bin"
  fetch_from_suite trixie etcd-server etcd-client
  link_binary etcd
  link_binary etcdctl
fi

if [ ! -x "$bin/consul" ]; then
  echo "installing Consul 1.8 into $bin"
  fetch_from_suite bullseye consul
  link_binary consul
fi

if ! command -v protoc >/dev/null; then
  echo "installing protoc (protobuf-compiler)"
  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
fi

echo "servers ready: $("$bin/etcd" --version | head -n 1); $("$bin/consul" version | head -n 1); $(protoc --version)"
