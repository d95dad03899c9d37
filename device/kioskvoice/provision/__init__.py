"""``kioskvoice provision``: first-boot import of the configuration an installer drops on the
boot partition (``/boot/firmware/kioskvoice.toml``), run by ``kioskvoice-provision.service``.

One module per step family, each named after what it owns; this package keeps every public
name importable from ``kioskvoice.provision``:

- :mod:`.command`: the command, its contract (validate everything, then apply; never a secret
  in any text) and the status file;
- :mod:`.planning`: validation of the whole file and the :class:`Plan` of what to apply;
  :mod:`.applying`: the steps in order;
- the step families: :mod:`.config_file` (the kiosk's config and the boot copy),
  :mod:`.credentials` (secrets into the credential store), :mod:`.wifi` (the NetworkManager
  keyfile), :mod:`.host` (hostname and SSH keys);
- what they share: :mod:`.problems` (the errors), :mod:`.target` (paths, users, a live
  system), :mod:`.network` (the ``[network]`` model), :mod:`.redaction` (secrets out of every
  text), :mod:`.files` (atomic writes), :mod:`.toml_writer` (TOML out).
"""

from .applying import apply
from .command import EX_CONFIG, EX_FAILURE, EX_OK, add_parser, check, main, provision, run
from .config_file import blank_secrets
from .credentials import (
    CredentialStore,
    PlainStore,
    SecretPlan,
    SystemdCredsStore,
    open_store,
)
from .files import write_file
from .network import NetworkSettings, is_ssh_public_key
from .planning import Plan, plan, read_file
from .problems import ApplyError, Problem, ProvisionError
from .redaction import MASK, WIFI_SECRET, Redactor
from .target import (
    APPLIED_NAME,
    BOOT_DIR,
    CONFIG_FILE,
    CREDENTIALS_DROPIN,
    CREDSTORE,
    CREDSTORE_ENCRYPTED,
    FAILED_MARKER,
    HOST_KEY,
    HOSTNAME_FILE,
    HOSTS_FILE,
    REGDOM_CONF,
    SERVICE_GROUP,
    SOURCE_NAME,
    STATUS_NAME,
    WIFI_KEYFILE,
    Paths,
    is_live,
    lookup_group,
    lookup_user,
)
from .toml_writer import dump_toml
from .wifi import WIFI_UUID, read_keyfile_psk, wifi_keyfile

__all__ = [
    "APPLIED_NAME",
    "BOOT_DIR",
    "CONFIG_FILE",
    "CREDENTIALS_DROPIN",
    "CREDSTORE",
    "CREDSTORE_ENCRYPTED",
    "EX_CONFIG",
    "EX_FAILURE",
    "EX_OK",
    "FAILED_MARKER",
    "HOSTNAME_FILE",
    "HOSTS_FILE",
    "HOST_KEY",
    "MASK",
    "REGDOM_CONF",
    "SERVICE_GROUP",
    "SOURCE_NAME",
    "STATUS_NAME",
    "WIFI_KEYFILE",
    "WIFI_SECRET",
    "WIFI_UUID",
    "ApplyError",
    "CredentialStore",
    "NetworkSettings",
    "Paths",
    "PlainStore",
    "Plan",
    "Problem",
    "ProvisionError",
    "Redactor",
    "SecretPlan",
    "SystemdCredsStore",
    "add_parser",
    "apply",
    "blank_secrets",
    "check",
    "dump_toml",
    "is_live",
    "is_ssh_public_key",
    "lookup_group",
    "lookup_user",
    "main",
    "open_store",
    "plan",
    "provision",
    "read_file",
    "read_keyfile_psk",
    "run",
    "wifi_keyfile",
    "write_file",
]
