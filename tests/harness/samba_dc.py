"""A real Active Directory for the tests: Samba 4 as a domain controller on 127.0.0.1.

Use from a test module (import the fixtures into the module's namespace)::

    from harness.samba_dc import samba_dc, samba_ou, SambaDC   # noqa: F401  (pytest puts tests/ on sys.path)

- ``samba_dc`` (session scope): a started DC (:class:`SambaDC`) with a freshly provisioned domain,
  stopped (and its directory removed) at the end of the session. Every module that imports the
  fixture gets the same DC (a process-wide singleton), so it starts once however many modules use it.
  The domain is provisioned once per machine and Samba version into ``/tmp/panelflow-samba-dc`` and
  kept as ``/tmp/panelflow-samba-dc.pristine``; each session starts from a copy of that pristine
  domain (``PANELFLOW_SAMBA_CACHE=0``: provision anew in a temporary directory).
- ``samba_ou`` (function scope): a fresh OU of its own under the domain for the test
  (``OU=pf-<test>-<n>,DC=test,DC=local``), removed with everything below it afterwards. Tests
  create their users, groups and sub-OUs in it, so no test sees another's objects.

LDAPS on 127.0.0.1:636 is fixed (Samba has no option to move it, and loopback aliases other than
127.0.0.1 are not interfaces Samba will bind), so one DC per machine: a lock file
(``/tmp/panelflow-samba-dc.lock``) makes a second session wait at most
``PANELFLOW_SAMBA_LOCK_WAIT`` seconds (120) and then fail, naming the holder, instead of hanging
or fighting over the port. Within one ``make test`` the tests using the DC are marked ``samba`` and
grouped on one pytest-xdist worker (tests/harness/classify.py), so only that worker starts it.
Samba must run as root. A missing ``samba`` skips the tests, except under ``CI=true`` where it
fails them.

The DC is started in its own process group with its stdin a pipe and a parent-death signal, so it
goes away with the test process even if that one is killed; :meth:`SambaDC.stop` ends it by PID.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

from harness import require_binary

REALM = "TEST.LOCAL"
DOMAIN = "TEST"
BASE_DN = "DC=test,DC=local"
ADMIN_USER = "Administrator@test.local"
ADMIN_DN = f"CN=Administrator,CN=Users,{BASE_DN}"
ADMIN_PASSWORD = "Passw0rd!Adm"
HOST = "127.0.0.1"
LDAPS_PORT = 636
LOCK_FILE = "/tmp/panelflow-samba-dc.lock"
WORK_DIR = Path("/tmp/panelflow-samba-dc")              # the tests' DC, one per machine (under the lock)
PRISTINE_DIR = Path("/tmp/panelflow-samba-dc.pristine")  # a just-provisioned copy of it
DEFAULT_USER_PASSWORD = "Us3r!Passw0rd"

# Domain password policy as provisioned (restored by SambaDC.reset_password_policy).
DEFAULT_POLICY = {"max_password_age_days": 42, "lockout_threshold": 0, "lockout_minutes": 30,
                  "reset_lockout_minutes": 30}

TICKS_PER_SECOND = 10_000_000


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class SambaDC:
    """One Samba AD DC in ``directory``: ``start()``, ``stop()``, and helpers to shape the directory.

    ``SambaDC(path, keep=True)`` keeps the provisioned directory (the benchmark re-uses a
    populated DC across runs); by default the directory is a temporary one, removed by ``stop()``.
    """

    realm, domain, base_dn = REALM, DOMAIN, BASE_DN
    admin_user, admin_dn, admin_password = ADMIN_USER, ADMIN_DN, ADMIN_PASSWORD
    host, port = HOST, LDAPS_PORT

    def __init__(self, directory: str | Path | None = None, keep: bool = False):
        self.keep = keep or directory is not None
        # Without a directory: the fixed WORK_DIR, restored from the pristine copy (see start()).
        self.pristine = directory is None and os.environ.get("PANELFLOW_SAMBA_CACHE", "1") != "0"
        self.dir = Path(directory) if directory else (
            WORK_DIR if self.pristine else Path(tempfile.mkdtemp(prefix="panelflow-samba-")))
        self.proc: subprocess.Popen | None = None
        self._lock_fd: int | None = None
        self._ldap = None
        self._ou_seq = 0

    @property
    def smb_conf(self) -> Path:
        return self.dir / "etc" / "smb.conf"

    # -- lifecycle ------------------------------------------------------------------------------------

    def _lock(self, wait: float) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise RuntimeError(
                        f"another process holds the Samba DC lock {LOCK_FILE} ({holder or 'unknown'}) — port 636 is"
                        f" one per machine; waited {wait:.0f} s (PANELFLOW_SAMBA_LOCK_WAIT)")
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        worker = os.environ.get("PYTEST_XDIST_WORKER")   # make test: which pytest-xdist worker holds it
        os.pwrite(fd, f"pid {os.getpid()}{f' (xdist {worker})' if worker else ''}: {' '.join(sys.argv)[:150]}\n"
                  .encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def provisioned(self) -> bool:
        return (self.dir / "private" / "sam.ldb").exists() and self.smb_conf.exists()

    def provision(self) -> None:
        tool = shutil.which("samba-tool") or "/usr/bin/samba-tool"
        self.dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [tool, "domain", "provision", "--use-rfc2307", f"--realm={REALM}", f"--domain={DOMAIN}",
             "--server-role=dc", "--dns-backend=NONE", f"--adminpass={ADMIN_PASSWORD}", f"--targetdir={self.dir}",
             f"--host-ip={HOST}", f"--option=interfaces={HOST}", "--option=bind interfaces only=yes"],
            cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        (self.dir / "provision.log").write_bytes(result.stdout)
        if result.returncode != 0:
            raise RuntimeError(f"samba-tool domain provision failed ({result.returncode}): "
                               + result.stdout.decode(errors="replace")[-2000:])
        text = self.smb_conf.read_text()
        local = (f"\tinterfaces = {HOST}\n\tserver services = rpc, ldap, cldap, kdc, drepl, kcc\n"
                 f"\tdisable netbios = yes\n\tlog file = {self.dir}/log.%m\n\tpid directory = {self.dir}/pid\n"
                 f"\tncalrpc dir = {self.dir}/ncalrpc\n")
        text = re.sub(r"^\t(interfaces|server services|log file|pid directory|ncalrpc dir) = .*\n", "", text,
                      flags=re.M)
        text = text.replace("[global]\n", "[global]\n" + local, 1)
        self.smb_conf.write_text(text)
        for sub in ("pid", "ncalrpc"):
            (self.dir / sub).mkdir(exist_ok=True)

    def _restore_pristine(self) -> None:
        """A freshly provisioned domain in WORK_DIR: a copy of the one provisioned once into that same
        path and kept in PRISTINE_DIR (provisioning takes 4–35 s depending on load; copying 33 MB
        well under 1 s). The absolute paths the provision wrote stay right because the copy goes back
        to the path it was provisioned at. Runs under the lock."""
        version = subprocess.run([shutil.which("samba") or "/usr/sbin/samba", "--version"], stdout=subprocess.PIPE,
                                 text=True, timeout=30).stdout.strip()
        marker = PRISTINE_DIR / ".panelflow-samba-version"
        shutil.rmtree(self.dir, ignore_errors=True)
        if marker.exists() and marker.read_text() == version:
            shutil.copytree(PRISTINE_DIR, self.dir, symlinks=True)
            (self.dir / marker.name).unlink()
            return
        self.provision()
        staging = PRISTINE_DIR.with_name(PRISTINE_DIR.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(self.dir, staging, symlinks=True)
        (staging / marker.name).write_text(version)
        shutil.rmtree(PRISTINE_DIR, ignore_errors=True)
        staging.rename(PRISTINE_DIR)

    def start(self, lock_wait: float | None = None, timeout: float = 60) -> "SambaDC":
        if os.geteuid() != 0:
            raise PermissionError("Samba as a domain controller must run as root")
        wait = float(os.environ.get("PANELFLOW_SAMBA_LOCK_WAIT", "120")) if lock_wait is None else lock_wait
        self._lock(wait)
        try:
            if _port_open(HOST, LDAPS_PORT):
                raise RuntimeError(f"{HOST}:{LDAPS_PORT} is already in use by a process that does not hold"
                                   f" {LOCK_FILE} (a Samba left behind?): stop it first")
            if self.pristine:
                self._restore_pristine()
            elif not self.provisioned():
                self.provision()
            samba = shutil.which("samba") or shutil.which("samba", path="/usr/sbin:/sbin")
            log = open(self.dir / "samba.out", "ab")
            self.proc = subprocess.Popen([samba, "-i", "-M", "single", "-s", str(self.smb_conf)],
                                         cwd=self.dir, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
            log.close()
            deadline = time.monotonic() + timeout
            while not self._ldaps_ready():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"samba exited ({self.proc.returncode}): "
                                       + (self.dir / "samba.out").read_text(errors="replace")[-2000:])
                if time.monotonic() > deadline:
                    raise TimeoutError(f"samba did not answer LDAPS on {HOST}:{LDAPS_PORT} within {timeout} s")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _ldaps_ready(self) -> bool:
        if not _port_open(HOST, LDAPS_PORT):
            return False
        try:
            self.ldap()
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            self._ldap = None
            return False

    def stop(self) -> None:
        if self._ldap is not None:
            try:
                self._ldap.unbind()
            except Exception:  # noqa: BLE001
                pass
            self._ldap = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)      # its own group: samba and its children
            except ProcessLookupError:
                pass
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc is not None and proc.stdin:
            proc.stdin.close()
        self._unlock()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- access ---------------------------------------------------------------------------------------

    def ldap(self):
        """An ldap3 connection bound as Administrator over LDAPS (certificate not validated: Samba's
        is self-signed). Cached; ``raise_exceptions=True``; no schema loaded (values are sent as given)."""
        if self._ldap is None or self._ldap.closed:
            from ldap3 import NONE, SIMPLE, Connection, Server, Tls

            server = Server(HOST, port=LDAPS_PORT, use_ssl=True, tls=Tls(validate=ssl.CERT_NONE), get_info=NONE,
                            connect_timeout=5)
            self._ldap = Connection(server, ADMIN_USER, ADMIN_PASSWORD, authentication=SIMPLE, auto_bind=True,
                                    raise_exceptions=True, receive_timeout=60, check_names=False,
                                    return_empty_attributes=False, auto_referrals=False)
        return self._ldap

    def connection(self, base_dn: str | None = None, **extra) -> str:
        """The JSON of an Airflow connection (type ``panelflow_active_directory``) to this DC, for
        ``monkeypatch.setenv("AIRFLOW_CONN_<ID>", dc.connection(...))``. Keyword arguments are
        extras (``port=…`` / ``login=…`` / ``password=…`` change those fields instead)."""
        fields = {"conn_type": "panelflow_active_directory", "host": HOST, "port": LDAPS_PORT,
                  "login": ADMIN_USER, "password": ADMIN_PASSWORD}
        for key in ("host", "port", "login", "password"):
            if key in extra:
                fields[key] = extra.pop(key)
        extras = {"use_ssl": True, "validate_cert": False, "connect_timeout": 3, "receive_timeout": 30, **extra}
        if base_dn:
            extras["base_dn"] = base_dn
        return json.dumps({**fields, "extra": extras})

    def samba_tool(self, *args: str, timeout: float = 60) -> str:
        """Run ``samba-tool … -s <this DC's smb.conf>`` → its output (raises on failure)."""
        tool = shutil.which("samba-tool") or "/usr/bin/samba-tool"
        result = subprocess.run([tool, *args, "-s", str(self.smb_conf)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=timeout, cwd=self.dir)
        out = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            raise RuntimeError(f"samba-tool {' '.join(args)} failed: {out[-1500:]}")
        return out

    # -- shaping the directory (as Administrator) -----------------------------------------------------

    def add_ou(self, name: str, parent: str | None = None, **attributes) -> str:
        from ldap3.utils.dn import escape_rdn

        dn = f"OU={escape_rdn(name)},{parent or BASE_DN}"
        self.ldap().add(dn, ["top", "organizationalUnit"], attributes or None)
        return dn

    def add_user(self, parent: str, sam: str, *, password: str | None = DEFAULT_USER_PASSWORD, enabled: bool = True,
                 cn: str | None = None, upn_suffix: str = "test.local", **attributes) -> str:
        """A user ``CN=<cn or sam>,<parent>`` with sAMAccountName ``sam``, UPN ``sam@upn_suffix``, the
        password set (``None``: no password, the account then must stay disabled) → its DN.
        Extra keyword arguments are LDAP attributes (``mail=…``, ``givenName=…``, a
        ``userAccountControl`` of your own instead of 512/514)."""
        from ldap3.utils.dn import escape_rdn

        dn = f"CN={escape_rdn(cn or sam)},{parent}"
        attrs = {"sAMAccountName": sam, "userPrincipalName": f"{sam}@{upn_suffix}", **attributes}
        if password is not None:
            attrs["unicodePwd"] = f'"{password}"'.encode("utf-16-le")
        attrs.setdefault("userAccountControl", str(0x200 if enabled and password is not None else 0x202))
        self.ldap().add(dn, ["top", "person", "organizationalPerson", "user"], attrs)
        return dn

    def add_group(self, parent: str, name: str, members: list[str] = (), *, security: bool = True,
                  **attributes) -> str:
        from ldap3.utils.dn import escape_rdn

        dn = f"CN={escape_rdn(name)},{parent}"
        group_type = -2147483646 if security else 2          # global security / global distribution
        attrs = {"sAMAccountName": name[:20], "groupType": str(group_type), **attributes}
        if members:
            attrs["member"] = list(members)
        self.ldap().add(dn, ["top", "group"], attrs)
        return dn

    def modify(self, dn: str, **replace) -> None:
        """Replace attributes (``None`` clears one)."""
        from ldap3 import MODIFY_REPLACE

        changes = {k: [(MODIFY_REPLACE, [] if v is None else (list(v) if isinstance(v, (list, tuple)) else [v]))]
                   for k, v in replace.items()}
        self.ldap().modify(dn, changes)

    def add_members(self, group_dn: str, *member_dns: str) -> None:
        from ldap3 import MODIFY_ADD

        self.ldap().modify(group_dn, {"member": [(MODIFY_ADD, list(member_dns))]})

    def remove_members(self, group_dn: str, *member_dns: str) -> None:
        from ldap3 import MODIFY_DELETE

        self.ldap().modify(group_dn, {"member": [(MODIFY_DELETE, list(member_dns))]})

    def delete(self, dn: str) -> None:
        self.ldap().delete(dn)

    def delete_tree(self, dn: str) -> None:
        """Delete ``dn`` and everything below it (tree-delete control); nothing if it is gone."""
        from ldap3.core.exceptions import LDAPNoSuchObjectResult

        try:
            self.ldap().delete(dn, controls=[("1.2.840.113556.1.4.805", True, None)])
        except LDAPNoSuchObjectResult:
            pass

    def get(self, dn: str, *attributes: str) -> dict[str, list[bytes]]:
        """Raw attribute values of ``dn`` (names as asked)."""
        conn = self.ldap()
        conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=list(attributes) or ["*"])
        raw = conn.response[0]["raw_attributes"]
        return {a: list(raw.get(a, [])) for a in attributes} if attributes else dict(raw)

    def get_int(self, dn: str, attribute: str) -> int | None:
        values = self.get(dn, attribute)[attribute]
        return int(values[0]) if values else None

    def guid(self, dn: str) -> str:
        import uuid

        return str(uuid.UUID(bytes_le=self.get(dn, "objectGUID")["objectGUID"][0]))

    def bind_fails(self, user: str, password: str) -> bool:
        """Try one simple bind as ``user`` (UPN or DN); True when the DC refused it."""
        from ldap3 import NONE, SIMPLE, Connection, Server, Tls
        from ldap3.core.exceptions import LDAPBindError, LDAPInvalidCredentialsResult

        server = Server(HOST, port=LDAPS_PORT, use_ssl=True, tls=Tls(validate=ssl.CERT_NONE), get_info=NONE)
        conn = Connection(server, user, password, authentication=SIMPLE, raise_exceptions=True)
        try:
            conn.bind()
        except (LDAPInvalidCredentialsResult, LDAPBindError):
            return True
        finally:
            conn.unbind()
        return False

    def password_policy(self, *, max_password_age_days: float | None = None, lockout_threshold: int | None = None,
                        lockout_minutes: float | None = None, reset_lockout_minutes: float | None = None) -> None:
        """Set the domain's password/lockout policy (the domain object's maxPwdAge, lockoutThreshold,
        lockoutDuration, lockOutObservationWindow — what ``samba-tool domain passwordsettings set``
        writes), effective at once."""
        changes = {}
        if max_password_age_days is not None:
            changes["maxPwdAge"] = str(-int(max_password_age_days * 86400 * TICKS_PER_SECOND))
        if lockout_threshold is not None:
            changes["lockoutThreshold"] = str(lockout_threshold)
        if lockout_minutes is not None:
            changes["lockoutDuration"] = str(-int(lockout_minutes * 60 * TICKS_PER_SECOND))
        if reset_lockout_minutes is not None:
            changes["lockOutObservationWindow"] = str(-int(reset_lockout_minutes * 60 * TICKS_PER_SECOND))
        if changes:
            self.modify(BASE_DN, **changes)

    def reset_password_policy(self) -> None:
        self.password_policy(**DEFAULT_POLICY)

    def new_ou_name(self, hint: str) -> str:
        self._ou_seq += 1
        clean = re.sub(r"[^A-Za-z0-9-]+", "-", hint).strip("-")[:40] or "t"
        return f"pf-{clean}-{os.getpid()}-{self._ou_seq}"


# -- the process-wide DC and the fixtures ---------------------------------------------------------------

# pytest may import this file twice (as ``samba_dc`` and ``tests.samba_dc``) and registers the
# fixture once per importing module: the DC itself must be one per process.
_REGISTRY = sys.modules.setdefault("_panelflow_samba_dc_registry", types.ModuleType("_panelflow_samba_dc_registry"))
if not hasattr(_REGISTRY, "dc"):
    _REGISTRY.dc = None
    _REGISTRY.users = 0
    _REGISTRY.error = None


def _stop_shared() -> None:
    dc, _REGISTRY.dc = _REGISTRY.dc, None
    if dc is not None:
        dc.stop()


atexit.register(_stop_shared)


def shared_dc() -> SambaDC:
    """The process's started DC (started on first call)."""
    if _REGISTRY.error is not None:
        raise RuntimeError(f"the Samba DC failed to start earlier in this process: {_REGISTRY.error}")
    if _REGISTRY.dc is None:
        try:
            _REGISTRY.dc = SambaDC().start()
        except Exception as exc:
            _REGISTRY.error = f"{type(exc).__name__}: {exc}"
            raise
    return _REGISTRY.dc


@pytest.fixture(scope="session")
def samba_dc():
    """A started Samba AD DC (:class:`SambaDC`), one per test session."""
    require_binary("samba")
    require_binary("samba-tool")
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("Samba as a domain controller must run as root")
        pytest.skip("Samba as a domain controller must run as root")
    try:
        dc = shared_dc()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    _REGISTRY.users += 1
    yield dc
    _REGISTRY.users -= 1
    if _REGISTRY.users == 0:
        _stop_shared()


@pytest.fixture
def samba_ou(samba_dc, request):
    """A fresh, empty OU directly under the domain for this test; deleted (with its subtree) after."""
    dn = samba_dc.add_ou(samba_dc.new_ou_name(request.node.name))
    yield dn
    samba_dc.delete_tree(dn)
