#!/usr/bin/env bash
# System packages the test suite needs in CI: a one-node SLURM for tests/test_slurm.py (slurmctld, slurmd,
# slurm-client, munge), ffmpeg for data_prep's image checks, and Debian's Fashion-MNIST (data.source=fashion_mnist).
# Idempotent: installs only what is missing. Without apt-get or root it says so and exits 0; the tests that need
# a package then skip with the reason (and fail under CI, where this script runs as root).
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge ffmpeg dataset-fashion-mnist)

if ! command -v apt-get > /dev/null; then
    echo "install-system-packages: no apt-get here; install ${packages[*]} another way" >&2
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-system-packages: not root; run as root to install ${packages[*]}" >&2
    exit 0
fi

missing=()
for package in "${packages[@]}"; do
    if [[ $(dpkg-query --show --showformat='${Status}' "$package" 2> /dev/null) != "install ok installed" ]]; then
        missing+=("$package")
    fi
done
if (( ${#missing[@]} == 0 )); then
    echo "install-system-packages: all present (${packages[*]})"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update --quiet
apt-get install --yes --quiet --no-install-recommends "${missing[@]}"
echo "install-system-packages: installed ${missing[*]}"
