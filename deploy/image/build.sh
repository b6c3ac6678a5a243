#!/bin/bash
# `make image`: podlock's OCI image from Debian packages and podlock's own wheel, no registry.
#   base   mmdebstrap of packages.txt, cached in build/image/ under the hash of the list and of
#          this script (delete it to take Debian's updates)
#   root   the base, then install.sh in a chroot: the locked wheels, the user, the trimming
#   image  that root as one layer, tarred with sorted names and clamped dates, packed by umoci
#          into dist/podlock-VERSION.oci.tar, image reference localhost/podlock:VERSION
# Every date is SOURCE_DATE_EPOCH (the Makefile sets it from the commit): two builds of one
# commit from one base give the same image digest.
# Usage: deploy/image/build.sh PIP   (PIP downloads the locked wheels)
set -euo pipefail
pip=$1
here=deploy/image
work=build/image
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
created=$(date --utc --date "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
# GNU tar as reproducible-builds.org recommends: order, owners and dates not from this machine
tar_flags=(--sort=name --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime --numeric-owner --format=pax
	--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
mkdir -p "$work" dist

base=$work/base-$(cat "$here/packages.txt" "$0" | sha256sum | cut -c1-12).tar
if [ ! -f "$base" ]; then
	rm -f "$work"/base-*.tar
	# essential: no apt in the image; merged-usr: /usr merged by symlinks, not by usrmerge+perl
	mmdebstrap --quiet --variant=essential --format=tar \
		--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
		--include="$(grep -v '^#' "$here/packages.txt" | paste -sd,)" bookworm "$base.tmp"
	mv "$base.tmp" "$base"
fi

root=$work/root
rm -rf "$root" "$work/wheels"
"$pip" download --quiet --disable-pip-version-check --only-binary :all: --no-deps \
	--require-hashes --requirement "$here/requirements.txt" --requirement "$here/pip.txt" \
	--dest "$work/wheels"
cp dist/podlock-"$version"-*.whl "$work/wheels/"
mkdir "$root"
tar --extract --file "$base" --directory "$root" --numeric-owner
mkdir "$root/tmp/podlock-image"
cp -r "$here/install.sh" "$here/requirements.txt" "$work/wheels" "$root/tmp/podlock-image/"
# a clean environment: nothing of this machine's (PIP_*, PYTHON*) reaches the image
chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	/bin/sh /tmp/podlock-image/install.sh /tmp/podlock-image/wheels
rm -rf "$root/tmp/podlock-image"
# entries named usr/bin/..., not ./usr/bin/...
(cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) |
	tar --create --file "$work/layer.tar" --directory "$root" "${tar_flags[@]}" \
		--no-recursion --files-from -

oci=$work/oci
rm -rf "$oci"
umoci init --layout "$oci"
umoci new --image "$oci:$version"
umoci raw add-layer --image "$oci:$version" --history.created "$created" \
	--history.created_by "make image (deploy/image/build.sh)" "$work/layer.tar"
umoci config --image "$oci:$version" --no-history --created "$created" --author podlock \
	--os linux --architecture amd64 --config.entrypoint podlock --config.user 65532:65532 \
	--config.workingdir / --config.env PYTHONDONTWRITEBYTECODE=1 \
	--config.env PATH=/usr/local/bin:/usr/bin:/bin \
	--config.label org.opencontainers.image.title=podlock \
	--config.label org.opencontainers.image.version="$version" \
	--config.label org.opencontainers.image.revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
umoci gc --layout "$oci"
tar --create --file "dist/podlock-$version.oci.tar" --directory "$oci" "${tar_flags[@]}" \
	--owner=0 --group=0 oci-layout index.json blobs
echo "dist/podlock-$version.oci.tar: localhost/podlock:$version," \
	"$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$oci/index.json")"
