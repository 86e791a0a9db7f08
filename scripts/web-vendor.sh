#!/usr/bin/env bash
# make web-vendor: fetch the console's browser packages from the npm registry
# at pinned versions, check each tarball against its pinned sha512
# integrity, and copy only the files the console serves, with the package's
# licence, into controller/console/static/vendor/<dir>/. The result is
# committed and embedded in the duet binary (go:embed), so building and
# running Duet needs neither Node.js nor a network; only this script does.
#
# To upgrade a package: change its version here, set its integrity to the
# registry's (npm view PKG@VERSION dist.integrity), run make web-vendor,
# look at the diff, run the console tests, commit.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=controller/console/static/vendor

# package|version|integrity|dir|files (space separated, inside the tarball's package/)
PACKAGES=(
	"htmx.org|2.0.11|sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA==|htmx|dist/htmx.min.js"
	"htmx-ext-sse|2.2.4|sha512-LJmxVhykyflBWgh5PvbRidcyuqMHlgfajmmzumvKctv9puvsufeH6OaejSMZTNTnEI8O2wXXn4ZZtBdpEMqmEQ==|htmx-ext-sse|dist/sse.min.js"
	"uplot|1.6.32|sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==|uplot|dist/uPlot.iife.min.js dist/uPlot.min.css"
	"@picocss/pico|2.1.1|sha512-kIDugA7Ps4U+2BHxiNHmvgPIQDWPDU4IeU6TNRdvXQM1uZX+FibqDQT2xUOnnO2yq/LUHcwnGlu1hvf4KfXnMg==|pico|css/pico.min.css"
	"redoc|2.5.2|sha512-sTJfItvRkcDTojB6wdLN4M+Ua6mlZwElV21Tf8Mn7IbQF/1Os6GvgQpZyLWPGZZHbhy7GC1Or1hTMHfz1vKh5A==|redoc|bundles/redoc.standalone.js bundles/redoc.standalone.js.LICENSE.txt"
)

die() { printf 'web-vendor: %s\n' "$*" >&2; exit 1; }
command -v npm >/dev/null || die "npm is needed to refresh the vendored packages (apt-get install npm); building Duet does not need it"
command -v openssl >/dev/null || die "openssl is needed to check the tarballs' integrity"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$DEST"
mkdir -p "$DEST"
manifest="$DEST/manifest.json"
printf '{\n  "generated_by": "make web-vendor (scripts/web-vendor.sh)",\n  "packages": [' >"$manifest"
sep=""
for entry in "${PACKAGES[@]}"; do
	IFS='|' read -r pkg version integrity dir files <<<"$entry"
	printf 'web-vendor: %s@%s\n' "$pkg" "$version" >&2
	tgz=$(cd "$work" && npm pack --silent "$pkg@$version" 2>/dev/null | tail -1)
	[[ -f $work/$tgz ]] || die "npm pack $pkg@$version gave no tarball"
	got="sha512-$(openssl dgst -sha512 -binary "$work/$tgz" | base64 -w0)"
	[[ $got == "$integrity" ]] || die "$pkg@$version: integrity $got, pinned $integrity"
	x="$work/x-$dir"
	mkdir -p "$x"
	tar -xzf "$work/$tgz" -C "$x"
	mkdir -p "$DEST/$dir"
	license=""
	for l in "$x"/package/LICEN[CS]E*; do
		[[ -f $l ]] || continue
		license=$(basename "$l")
		cp "$l" "$DEST/$dir/$license"
	done
	[[ -n $license ]] || die "$pkg@$version has no LICENSE file"
	list=""
	for f in $files; do
		[[ -f $x/package/$f ]] || die "$pkg@$version has no $f"
		cp "$x/package/$f" "$DEST/$dir/$(basename "$f")"
		list+="${list:+, }\"$(basename "$f")\""
	done
	printf '%s\n    {"name": "%s", "version": "%s", "integrity": "%s", "dir": "%s", "license_file": "%s", "files": [%s]}' \
		"$sep" "$pkg" "$version" "$integrity" "$dir" "$license" "$list" >>"$manifest"
	sep=","
done
printf '\n  ]\n}\n' >>"$manifest"
printf 'web-vendor: wrote %s\n' "$DEST" >&2
