#!/usr/bin/env bash
# Installs the DMAPI for C programs: PREFIX/include/dmapi.h (and
# xfs/dmapi.h), PREFIX/lib/libdmapi.so.1.0.0 with its links libdmapi.so.1,
# libdmapi.so and libdm.so (programs linked with -ldm), and
# PREFIX/lib/pkgconfig/dmapi.pc, so that
#   cc prog.c $(pkg-config --cflags --libs dmapi)
# builds an XDSM program against Tidepool.
# Usage: scripts/install-dmapi.sh PREFIX [--lib FILE]
#   --lib FILE: install this already built liblibdmapi.so instead of
#               building it (cargo build --release -p libdmapi).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 PREFIX [--lib FILE]" >&2; exit 2; }
prefix=$1
shift
lib=
while [ $# -gt 0 ]; do
    case $1 in
    --lib) lib=$2; shift 2 ;;
    *) echo "$0: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$lib" ]; then
    cargo build --release -q -p libdmapi --lib
    lib=${CARGO_TARGET_DIR:-target}/release/liblibdmapi.so
fi
[ -f "$lib" ] || { echo "$0: no library at $lib" >&2; exit 1; }
mkdir -p "$prefix/include/xfs" "$prefix/lib/pkgconfig"
install -m 0644 dmapi/lib/include/dmapi.h "$prefix/include/dmapi.h"
install -m 0644 dmapi/lib/include/xfs/dmapi.h "$prefix/include/xfs/dmapi.h"
install -m 0755 "$lib" "$prefix/lib/libdmapi.so.1.0.0"
ln -sf libdmapi.so.1.0.0 "$prefix/lib/libdmapi.so.1"
ln -sf libdmapi.so.1 "$prefix/lib/libdmapi.so"
ln -sf libdmapi.so.1 "$prefix/lib/libdm.so"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
cat >"$prefix/lib/pkgconfig/dmapi.pc" <<PC
prefix=$(cd "$prefix" && pwd)
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: dmapi
Description: X/Open XDSM (DMAPI) for Tidepool DM applications
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -Wl,-rpath,\${libdir} -ldmapi
PC
echo "installed dmapi.h and libdmapi.so.1 under $prefix"
