#!/bin/sh
# Installs podlock into an image's root filesystem. Runs inside that root, as root, after the
# Debian packages of packages.txt: `make image` runs it in a chroot (build.sh), the Containerfile
# in a RUN step. $1 holds the wheels: podlock's, and those of requirements.txt and pip.txt.
set -eu
wheels=$1
here=$(dirname "$0")

# podlock and exactly the locked dependencies, offline; pip runs from its wheel and stays out
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
pip() { python3 "$(echo "$wheels"/pip-*.whl)/pip" "$@"; }
pip install --quiet --no-index --find-links "$wheels" --no-compile --break-system-packages \
	--only-binary :all: --require-hashes --requirement "$here/requirements.txt"
pip install --quiet --no-index --no-deps --no-compile --break-system-packages "$wheels"/podlock-*.whl
pip check
# kubernetes' asyncio twin of its client, half the package: podlock uses the synchronous client
# (nothing it imports reaches kubernetes.aio)
rm -rf /usr/local/lib/python3.11/dist-packages/kubernetes/aio

# the webhook's user (the detector runs as root): no home, no shell, no password
echo 'podlock:x:65532:65532:podlock:/nonexistent:/usr/sbin/nologin' >>/etc/passwd
echo 'podlock:x:65532:' >>/etc/group

# What an immutable image never uses: apt (a base image may have it), documentation but the
# copyright files, translations, caches, logs (they carry the build's dates).
for package in apt libapt-pkg6.0 debian-archive-keyring gpgv; do
	if dpkg-query --show --showformat='${Status}' "$package" 2>/dev/null | grep -q 'ok installed'; then
		dpkg --purge --force-remove-essential --force-depends "$package" >/dev/null
	fi
done
find /usr/share/doc -type f ! -name copyright -delete
find /usr/share/doc -depth -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian \
	/var/cache/apt /var/cache/ldconfig /var/lib/apt/lists /var/log/* /var/lib/dpkg/*-old

# Bytecode for everything, made now: the root filesystem is read-only at run time. Hash-based
# and unchecked (nothing to stat, no build date inside), so two builds write the same bytes.
find /usr -name __pycache__ -type d -prune -exec rm -rf {} +
PYTHONHASHSEED=0 python3 -B -m compileall -q -f -j 1 --invalidation-mode unchecked-hash \
	/usr/lib/python3.11 /usr/lib/python3/dist-packages /usr/local/lib/python3.11/dist-packages
