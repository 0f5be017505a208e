#!/usr/bin/env bash
# Makes sure wgpu finds a Vulkan adapter, so the reference tests run on the wgpu backend for real:
# a machine without a Vulkan driver (CI has no GPU) gets lavapipe, Mesa's CPU implementation of
# Vulkan, from Debian's mesa-vulkan-drivers (with the loader, libvulkan1). Called by
# scripts/test.sh; prints nothing when a driver is already installed.
#
# Fails when no driver is installed and none can be (not root and no sudo, no apt-get); set
# AIRLLM_SKIP_WGPU=1 to run the tests without the wgpu backend instead.
set -euo pipefail
have_driver() {
  ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' && compgen -G '/usr/share/vulkan/icd.d/*.json' >/dev/null
}
have_driver && exit 0
packages=(mesa-vulkan-drivers libvulkan1)
if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  sudo=(false)
fi
if command -v apt-get >/dev/null && "${sudo[@]}" true 2>/dev/null; then
  echo "installing ${packages[*]} (lavapipe, a CPU Vulkan driver) for the wgpu tests" >&2
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${packages[@]}" >&2; then
    "${sudo[@]}" apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${packages[@]}" >&2
  fi
fi
have_driver && exit 0
echo "no Vulkan driver for the wgpu tests, and ${packages[*]} could not be installed here" >&2
echo "(needs apt-get as root or passwordless sudo); AIRLLM_SKIP_WGPU=1 runs the tests without wgpu" >&2
exit 1
