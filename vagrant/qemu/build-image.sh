#!/usr/bin/env bash
# Build the Debian 12 disk image the two lab VMs (target, prober) boot from.
#
#   build-image.sh OUTDIR PYTHON-REQUIREMENT...
#
# No VM image can be downloaded here, so this makes one with debootstrap from the
# machine's own Debian mirror: systemd, openssh-server, nftables + python3-nftables, iptables,
# python3-apt and python3-packaging (Ansible's apt and pip modules need them), and a venv at /opt/harden/venv with
# harden's Python dependencies already installed. The VMs have no route to PyPI, so
# this is what a Vagrant box looks like after `pip install` had network; the Ansible
# role still runs its install steps against it and finds them satisfied.
#
# OUTDIR gets: disk.img (ext4, raw), vmlinuz, initrd.img, id_ed25519 (root's SSH key
# for the image), and built.ok last, so a half-built OUTDIR is never mistaken for a
# finished one. Needs root, debootstrap, e2fsprogs (mkfs.ext4 -d) and network to the
# Debian mirror and PyPI (the wheels are fetched by $PYTHON's pip on the host, with
# the host's pip settings, then installed in the image offline). Mounts happen in a private mount namespace: nothing stays
# mounted on the host when this exits, pass or fail.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUTDIR [PYTHON-REQUIREMENT...]" >&2
  exit 2
fi
out=$(realpath -m "$1"); shift
mirror=${HARDEN_VM_MIRROR:-http://deb.debian.org/debian}
python=${PYTHON:-python3}

if [[ -z ${HARDEN_IN_PRIVATE_MOUNTS:-} ]]; then
  exec env HARDEN_IN_PRIVATE_MOUNTS=1 unshare --mount --propagation private -- "$0" "$out" "$@"
fi

packages=(
  linux-image-amd64 initramfs-tools systemd-sysv udev dbus openssh-server
  python3 python3-venv python3-apt python3-packaging python3-nftables nftables libpcap0.8
  iptables iproute2 iputils-ping netbase kmod procps
  # Installed but disabled: the boot tests under systemd-nspawn (tests/test_boot.py) enable
  # them in their own overlay, to check harden's unit against their orderings.
  docker.io busybox-static firewalld
)

work="$out.tmp"
root="$work/rootfs"
rm -rf "$work"
mkdir -p "$work"

step() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*"; }

step "debootstrap bookworm (minbase) from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# No daemon may start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

in_root() {
  chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"
}

step "apt-get install ${packages[*]}"
in_root apt-get update -qq
in_root apt-get install -y -qq --no-install-recommends "${packages[@]}" >"$work/apt.log" 2>&1 \
  || { tail -20 "$work/apt.log" >&2; exit 1; }

step "venv /opt/harden/venv: $*"
mkdir -p "$root/tmp/wheels"
"$python" -m pip download -q --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 -d "$root/tmp/wheels" "setuptools>=68" wheel "$@"
in_root python3 -m venv --system-site-packages /opt/harden/venv
in_root /opt/harden/venv/bin/pip install -q --no-index --find-links /tmp/wheels \
  "setuptools>=68" wheel "$@"
rm -rf "$root/tmp/wheels"

step "configure: fstab, SSH key, addresses from the kernel command line"
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$root/etc/fstab"
: >"$root/etc/machine-id"      # each VM makes its own on first boot
rm -f "$root/etc/ssh/ssh_host_"*
in_root ssh-keygen -A -q
ssh-keygen -q -t ed25519 -N "" -C harden-vm-lab -f "$work/id_ed25519"
install -d -m 700 "$root/root/.ssh"
install -m 600 "$work/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"

# The lab passes each VM its name and addresses on the kernel command line
# (lab.name=, lab.ip4=, lab.ip6=): one image, two machines.
cat >"$root/usr/local/sbin/lab-net" <<'EOF'
#!/bin/sh
set -eu
name="" ip4="" ip6=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lab.name=*) name=${arg#lab.name=} ;;
    lab.ip4=*) ip4=${arg#lab.ip4=} ;;
    lab.ip6=*) ip6=${arg#lab.ip6=} ;;
  esac
done
[ -n "$name" ] && hostname "$name" && echo "$name" >/etc/hostname
ip link set lo up
ip link set eth0 up
[ -n "$ip4" ] && ip addr add "$ip4" dev eth0
[ -n "$ip6" ] && ip -6 addr add "$ip6" dev eth0 nodad
exit 0
EOF
chmod 755 "$root/usr/local/sbin/lab-net"
cat >"$root/etc/systemd/system/lab-net.service" <<'EOF'
[Unit]
Description=Lab addresses from the kernel command line
# Ordered like ifupdown's networking.service (and systemd-networkd, NetworkManager): after
# network-pre.target, so what a host loads before its network (harden.service) has run
# when the link comes up. Before it, the link raced harden.service at every boot.
Wants=network-pre.target network.target
After=network-pre.target
Before=network.target ssh.service
After=systemd-udev-settle.service sys-subsystem-net-devices-eth0.device
Requires=sys-subsystem-net-devices-eth0.device
# A container booted from this image (tests/nspawnlab.py) has no eth0 device unit and no
# lab.* arguments: its harness brings its link up.
ConditionVirtualization=!container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/lab-net

[Install]
WantedBy=multi-user.target
EOF
in_root systemctl enable -q lab-net.service
# Nothing in the lab needs these, and under software emulation every unit costs seconds.
# Docker and firewalld would rewrite the VMs' firewall: only the nspawn boot tests start them.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
  docker.service docker.socket containerd.service firewalld.service; do
  in_root systemctl disable -q "$unit" 2>/dev/null || true
done
in_root apt-get clean

cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
umount "$root/dev" "$root/sys" "$root/proc"

step "mkfs.ext4 -d (disk.img)"
size_mb=$(( $(du -sm "$root" | cut -f1) + 768 ))
mkfs.ext4 -q -F -L harden-vm -d "$root" "$work/disk.img" "${size_mb}M"
rm -rf "$root"

rm -rf "$out"
mv "$work" "$out"
touch "$out/built.ok"
step "done: $out ($(du -sh "$out" | cut -f1))"
