# Set-up and entry points. Every target is idempotent and safe to re-run as root
# on a fresh Debian 12 machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# libpcap0.8: verify compiles its capture filter with it, through ctypes (not only tcpdump's).
DEB_PACKAGES := nftables python3-nftables iptables iproute2 nmap netbase python3-venv libpcap0.8 \
  tcpdump iputils-ping ndiff man-db
STAMP := $(VENV)/.installed

.PHONY: install deb apt-install apt-install-nostart test test-vm lint demo bench man collection \
  role-readme package clean

install: $(STAMP)

# Without their recommends: vagrant (for `vagrant validate` of vagrant/Vagrantfile; no
# VirtualBox or libvirt stack, 54 packages instead of 429), and qemu, debootstrap and
# openssh-client for tests/test_vms.py, which boots the Vagrantfile's two machines as
# qemu VMs from a Debian image built here (no image can be downloaded); systemd-container
# (systemd-nspawn) for tests/test_boot.py, which boots the same image as containers;
# binutils (strip) for tests/test_package.py, which builds the .deb as make package does.
DEB_NO_RECOMMENDS := vagrant qemu-system-x86 qemu-utils debootstrap debian-archive-keyring \
  e2fsprogs openssh-client systemd-container binutils

# For tests/test_forwarded.py: a real dockerd, started only inside test namespaces, and a
# busybox for its image (no registry is reachable). ufw, for tests/test_coexist.py: enabled
# only inside a test namespace, its /etc/ufw a bind-mounted temporary copy. openssh-server,
# for tests/test_egress.py: a real sshd session across an egress apply, in a namespace.
DEB_DOCKER := docker.io busybox-static ufw openssh-server

deb:
	@$(MAKE) --no-print-directory apt-install PKGS="$(DEB_PACKAGES)" APT_FLAGS=""
	@$(MAKE) --no-print-directory apt-install PKGS="$(DEB_NO_RECOMMENDS)" \
	  APT_FLAGS="--no-install-recommends"
	@$(MAKE) --no-print-directory apt-install-nostart PKGS="$(DEB_DOCKER)"

# Like apt-install, but the packages' services never start on this machine: dockerd in the
# machine's own namespace would rewrite its iptables (FORWARD policy DROP). A policy-rc.d
# that forbids starting is in place during the install (removed after, unless it was there
# already), and on a systemd host the units we installed are disabled for boot too.
apt-install-nostart:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (services not started):$$missing"; \
	  made=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made=1; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  rc=$$?; if [ -n "$$made" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  if [ $$rc -eq 0 ] && [ -d /run/systemd/system ]; then \
	    systemctl disable --quiet docker.service docker.socket containerd.service ufw.service \
	      ssh.service ssh.socket \
	      2>/dev/null || true; \
	  fi; \
	  exit $$rc; \
	fi

# Install those Debian packages in PKGS that are not installed yet.
apt-install:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    $(APT_FLAGS) $$missing >/dev/null; \
	fi

# The venv sees Debian's python3-nftables (the official libnftables bindings)
# through --system-site-packages; it must be made from Debian's own python3.
$(PY): | deb
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(MAKE) --no-print-directory deb
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c "import nftables, harden"
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The everyday tier: ruff, mypy, every namespace test and the boot tests under systemd-nspawn
# (tests/test_boot.py boots the VM image as containers; the first test to need the image
# builds it into /var/cache/harden-vm, about 2.5 minutes on a fresh machine, while the other
# workers go on). Four workers on two cores: most namespace tests wait on timers, not the
# CPU. Tests marked "alone" (those that count TCP retransmissions, which a starved CPU causes
# by itself) then run one at a time. The VMs are not collected: they are `make test-vm`.
#
# Python may write bytecode during the tests (a machine that sets PYTHONDONTWRITEBYTECODE
# otherwise compiles harden's 94 modules again in every harden process the tests start,
# about 0.08 s of CPU each).
PYTEST_EVERYDAY := env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/pytest --ignore=tests/test_vms.py
test: install lint
	$(PYTEST_EVERYDAY) -n 4 --dist loadgroup --durations=15 -m "not alone"
	$(PYTEST_EVERYDAY) --durations=5 -m alone

# The VM tier: the scenarios of tests/test_vms.py on two qemu VMs (a real kernel boot, the
# README walked to the letter, the Ansible role over SSH). Under software emulation here it
# takes about 25 minutes; CI runs it after `make test`. Builds the Debian image into
# /var/cache/harden-vm on first use (the boot tests share it).
test-vm: install
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/pytest -s --durations=10 tests/test_vms.py

demo: install
	$(VENV)/bin/harden lab rulesets/web-server.yaml

# The man pages, from the CLI's own help (click-man); tests/test_man.py checks they are current.
man: install
	$(PY) docs/man/generate.py docs/man $$(date +%Y-%m-%d)

# The harden.harden Ansible collection as a tarball in build/, for `ansible-galaxy collection
# install build/harden-harden-*.tar.gz` (tests/test_ansible.py builds and installs it too).
# It needs ansible-galaxy alone, not the test machine: the venv's if `make install` made it,
# else ansible-core in a small venv of its own (build/galaxy), and no VM or Docker package.
GALAXY_VENV := build/galaxy
collection:
	@$(MAKE) --no-print-directory apt-install PKGS="python3-venv" APT_FLAGS="--no-install-recommends"
	@if [ -x $(VENV)/bin/ansible-galaxy ]; then galaxy=$(VENV)/bin/ansible-galaxy; else \
	  galaxy=$(GALAXY_VENV)/bin/ansible-galaxy; \
	  if [ ! -x $$galaxy ]; then /usr/bin/python3 -m venv $(GALAXY_VENV) && \
	    $(GALAXY_VENV)/bin/pip install -q ansible-core || exit 1; fi; \
	fi; \
	$$galaxy collection build --force vagrant/ansible/collection --output-path build

# The role README's table of variables, from its meta/argument_specs.yml (tests/collection.py).
role-readme: install
	$(PY) -m tests.collection --write

# The Debian package, build/harden_VERSION_ARCH.deb, for `apt install ./build/harden_*.deb`:
# harden and its Python dependencies in a private venv under /usr/lib/harden (Debian 12 has
# no pydantic 2), the man pages and shell completions; docs/operations.md, "The Debian
# package". dpkg-deb builds it (no debhelper); lintian must find no error in it. Rebuilt from
# scratch each time: pip resolves the dependencies anew. tests/test_package.py installs it.
# Only what the build needs: Debian's python3-venv, strip (binutils), lintian.
DEB_PACKAGING := python3-venv binutils lintian
package:
	@$(MAKE) --no-print-directory apt-install PKGS="$(DEB_PACKAGING)" APT_FLAGS="--no-install-recommends"
	/usr/bin/python3 packaging/build_deb.py build
	lintian --fail-on error \
	  build/harden_$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)_$$(dpkg --print-architecture).deb

# Benchmarks are not tests: figures side by side with nmap, measured in one run.
bench: install
	$(PY) -m bench.verify_vs_nmap --runs 3
	$(PY) -m bench.scale
	$(PY) -m bench.fleet
	$(PY) -m bench.reload
	$(PY) -m bench.egress
	$(PY) -m bench.analyze
	$(PY) -m bench.diff

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
