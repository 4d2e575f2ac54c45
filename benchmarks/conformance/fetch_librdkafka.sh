#!/usr/bin/env bash
# Fetch librdkafka's source from Debian (bookworm: 2.0.2-1) into $1 with `apt-get source`.
# apt-get source needs a deb-src entry; as root, one for the host's own suites is added
# (/etc/apt/sources.list.d/streamhouse-deb-src.sources) when there is none.
set -euo pipefail
dest=${1:?usage: fetch_librdkafka.sh DIR}
mkdir -p "$dest"
if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [ "$(id -u)" != 0 ]; then
        echo "apt-get source needs a deb-src entry in /etc/apt/sources.list.d/ (run as root to add one)" >&2
        exit 1
    fi
    . /etc/os-release
    cat > /etc/apt/sources.list.d/streamhouse-deb-src.sources <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME} ${VERSION_CODENAME}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi
apt-get update -qq
if [ "$(id -u)" = 0 ]; then  # what its configure needs for the codecs the tests use
    apt-get install -y -qq libzstd-dev zlib1g-dev libssl-dev >/dev/null
fi
cd "$dest" && apt-get source -qq librdkafka=2.0.2-1
