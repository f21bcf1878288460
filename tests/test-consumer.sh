#!/bin/sh
# Links a separate program against uvip two ways: through the installed
# uvip.pc (pkg-config), and with uvip as a meson subproject.
set -eu
src=$1 build=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# 1. Installed: meson install into a staging prefix, then pkg-config.
meson install -C "$build" --destdir "$tmp/stage" --quiet >/dev/null
prefix=$(meson introspect "$build" --buildoptions | python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"][0])')
libdir=$(meson introspect "$build" --buildoptions | python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="libdir"][0])')
case $libdir in /*) ;; *) libdir=$prefix/$libdir ;; esac
pcdir=$tmp/stage$libdir/pkgconfig
sed -i "s#^prefix=.*#prefix=$tmp/stage$prefix#" "$pcdir/uvip.pc"
PKG_CONFIG_PATH=$pcdir pkg-config --exists uvip
PKG_CONFIG_PATH=$pcdir pkg-config --print-requires uvip | grep -q libuv
cc -std=c99 -pedantic -Wall -Wextra -Werror -D_POSIX_C_SOURCE=200809L -o "$tmp/consumer" "$src/tests/consumer/consumer.c" \
  $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs uvip)
LD_LIBRARY_PATH=$tmp/stage$libdir "$tmp/consumer"

# 2. Subproject: the consumer finds uvip in its subprojects/ directory.
mkdir -p "$tmp/sub/subprojects"
cp "$src/tests/consumer/meson.build" "$src/tests/consumer/consumer.c" "$tmp/sub/"
ln -s "$(cd "$src" && pwd)" "$tmp/sub/subprojects/uvip"
meson setup "$tmp/sub/build" "$tmp/sub" --wrap-mode=forcefallback -Duvip:tests=false >/dev/null
ninja -C "$tmp/sub/build" >/dev/null
"$tmp/sub/build/consumer"
echo "consumer: pkg-config and subproject builds link and run"
