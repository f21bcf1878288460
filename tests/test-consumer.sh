#!/bin/sh
# Links a separate program against uvip: through the installed uvip.pc
# (pkg-config), statically as README.md says, and with uvip as a meson
# subproject. Also checks the installed docs' links.
set -eu
src=$1 build=$2 static_ldflags=${3:-}
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

# 1b. Static: README.md's command (libuvip.a, libuv's libuv_a.a, shared
# libmnl), when the static library is installed.
if [ -f "$tmp/stage$libdir/libuvip.a" ]; then
  cc -std=c99 -pedantic -Wall -Wextra -Werror -D_POSIX_C_SOURCE=200809L -o "$tmp/consumer-static" \
    "$src/tests/consumer/consumer.c" $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags uvip) \
    "$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=libdir uvip)/libuvip.a" \
    $(pkg-config --libs libuv-static libmnl) $static_ldflags
  if readelf -d "$tmp/consumer-static" | grep -E 'NEEDED.*(libuvip|libuv\.so)'; then
    echo "static: the program still needs a shared uvip or libuv"; exit 1
  fi
  "$tmp/consumer-static"
fi

# 1c. The installed README.md and docs: every relative link resolves in the
# installed tree (include/ in the doc directory leads to the headers).
datadir=$(meson introspect "$build" --buildoptions | python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="datadir"][0])')
includedir=$(meson introspect "$build" --buildoptions | python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="includedir"][0])')
case $datadir in /*) ;; *) datadir=$prefix/$datadir ;; esac
case $includedir in /*) ;; *) includedir=$prefix/$includedir ;; esac
python3 - "$tmp/stage" "$datadir/doc/uvip" "$includedir" <<'PY'
import os, re, sys
stage, docdir, incdir = sys.argv[1:]
root = stage + docdir
inc_link = os.path.join(root, 'include')
assert os.readlink(inc_link) == incdir, 'doc include/ link: %s' % os.readlink(inc_link)
bad, n = [], 0
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith('.md'):
            continue
        path = os.path.join(d, f)
        for target in re.findall(r'\]\(([^)#\s]+)', open(path).read()):
            if re.match(r'[a-z]+:', target):
                continue
            n += 1
            t = os.path.normpath(os.path.join(d, target))
            if t.startswith(inc_link + '/'):
                t = stage + incdir + t[len(inc_link):]
            if not os.path.exists(t):
                bad.append('%s -> %s' % (os.path.relpath(path, root), target))
assert os.path.exists(os.path.join(root, 'README.md')), 'README.md not installed'
if bad:
    sys.exit('installed docs: broken links:\n  ' + '\n  '.join(bad))
print('installed docs: %d relative links resolve' % n)
PY

# 2. Subproject: the consumer finds uvip in its subprojects/ directory and
# builds it with strict flags (warning_level=3 is -Wall -Wextra -Wpedantic;
# command-line options reach the subproject too). By default uvip adds only
# its library: no test, benchmark or example in the parent's build, test
# list or install.
mkdir -p "$tmp/sub/subprojects"
cp "$src/tests/consumer/meson.build" "$src/tests/consumer/consumer.c" "$tmp/sub/"
ln -s "$(cd "$src" && pwd)" "$tmp/sub/subprojects/uvip"
meson setup "$tmp/sub/build" "$tmp/sub" --wrap-mode=forcefallback \
  -Dwerror=true -Dwarning_level=3 -Dc_args='-Wextra -pedantic' > "$tmp/sub/setup.log" ||
  { cat "$tmp/sub/setup.log"; exit 1; }
# The strict flags really reach uvip's own sources.
python3 - "$tmp/sub/build/compile_commands.json" <<'PY'
import json, sys
cmds = [c['command'] for c in json.load(open(sys.argv[1])) if '/subprojects/uvip/lib/' in c['file']]
assert cmds, 'no uvip library source compiled'
for c in cmds:
    for flag in ('-Werror', '-Wextra', '-pedantic'):
        assert flag in c.split(), 'uvip compiled without %s: %s' % (flag, c)
PY
ninja -C "$tmp/sub/build" > "$tmp/sub/ninja.log" || { cat "$tmp/sub/ninja.log"; exit 1; }
"$tmp/sub/build/consumer"
# (Newer meson prefixes each name with its project.)
tests=$(meson test -C "$tmp/sub/build" --no-rebuild --list 2>/dev/null)
if [ "$(echo "$tests" | sed 's/^uvip-consumer[:/ ]*//')" != "consumer-runs" ]; then
  echo "subproject: the parent's test list holds more than its own test:"; echo "$tests"; exit 1
fi
# uvip's targets in the parent's build: its library, and the archive for
# white-box tests, which is not built by default.
meson introspect "$tmp/sub/build" --targets | python3 -c '
import json, sys
bad = [t["name"] for t in json.load(sys.stdin) if t["subproject"] == "uvip"
       and not (t["name"] == "uvip" and t["type"] in ("shared library", "static library"))
       and not (t["name"] == "uvip-internal" and not t["build_by_default"])]
if bad:
    sys.exit("subproject: uvip adds these targets to the parent: %s" % " ".join(sorted(bad)))
'
meson install -C "$tmp/sub/build" --destdir "$tmp/sub/stage" --quiet >/dev/null
if find "$tmp/sub/stage" -path '*/bin/*' ! -name consumer | grep .; then
  echo "subproject: uvip installs programs into the parent's install"; exit 1
fi
echo "consumer: pkg-config and subproject builds link and run; as a subproject uvip adds only its library"
