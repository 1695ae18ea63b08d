"""A fleet inventory for ``harden verify --inventory``: hosts, their manifests and addresses.

    hosts:
      - {name: web-1, manifest: web-server.yaml, targets: [198.19.254.1, "fdff:18::1"]}

Manifest paths are relative to the inventory file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harden.errors import ManifestError
from harden.files import load_manifest, read_text
from harden.manifest.parse import field_path
from harden.manifest.ports import show
from harden.manifest.safeyaml import load_yaml
from harden.policy.model import Policy, build_policy
from harden.text import one_line
from harden.types import Address


class _Host(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    manifest: str = Field(min_length=1)
    targets: tuple[Address, ...] = Field(min_length=1)


class _Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: tuple[_Host, ...] = Field(min_length=1)


@dataclass(frozen=True)
class FleetHost:
    """One host of the fleet, its policy loaded."""

    name: str
    manifest: Path
    policy: Policy
    targets: tuple[Address, ...]


def load_inventory(path: Path) -> list[FleetHost]:
    """Read an inventory and every manifest it names; one-line errors naming the field."""
    # Duplicate keys are refused like in manifests: a second "hosts:" must not drop the first.
    data = load_yaml(read_text(path), str(path))
    try:
        inventory = _Inventory.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        raise ManifestError(
            str(path), field_path(tuple(first["loc"])), one_line(message, 300)
        ) from None
    names: dict[str, int] = {}
    owners: dict[Address, int] = {}
    for i, host in enumerate(inventory.hosts):
        if host.name in names:
            raise ManifestError(
                str(path), f"hosts[{i}].name", f"duplicate host name {show(host.name)}"
            )
        names[host.name] = i
        for j, target in enumerate(host.targets):
            # One address, two policies: which one the machine enforces is unknowable.
            k = owners.setdefault(target, i)
            if k != i and _manifest_path(path, inventory.hosts[k]) != _manifest_path(path, host):
                other = inventory.hosts[k]
                raise ManifestError(
                    str(path),
                    f"hosts[{i}].targets[{j}]",
                    f"{target} is also a target of hosts[{k}] ({one_line(other.name, 40)})",
                )
    hosts = []
    for host in inventory.hosts:
        manifest = _manifest_path(path, host)
        hosts.append(
            FleetHost(host.name, manifest, build_policy(load_manifest(manifest)), host.targets)
        )
    return hosts


def _manifest_path(inventory: Path, host: _Host) -> Path:
    return (inventory.parent / host.manifest).resolve()
