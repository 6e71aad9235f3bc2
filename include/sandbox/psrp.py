"""The PowerShell-remoting boundary for tests: pypsrp's real PSRP messages in, recorded output back.

No Windows server runs here, so Exchange and Hyper-V are tested at the PSRP boundary. The real
:class:`PsrpHook` and pypsrp build the real CreatePipeline message (fragmented, serialized as CLIXML,
exactly what would travel inside the WinRS Command request); this endpoint stands in for the WinRS
shell under pypsrp's :class:`RunspacePool`:

- it **decodes** each CreatePipeline with pypsrp's own defragmenter and deserializer and records
  what was sent (:class:`SentCommand`: script name, whether it is a script, the parameters as they
  arrived, the raw CLIXML), so a test asserts the exact command and parameters — and that a value
  arrived as a parameter object and never inside script text;
- it **answers** with real PSRP messages (PIPELINE_OUTPUT with the recorded JSON text,
  ERROR_RECORD, PIPELINE_STATE Completed/Failed) that pypsrp parses as it would a server's;
- it can hang up or time out mid-call (``requests`` ReadTimeout/ConnectionError from receive), as
  a WinRM listener does.

Recordings are what our scripts print on a real server: ``ConvertTo-Json`` of the cmdlet's objects
(``Get-MailboxDatabase -Status``, ``Get-VM`` …) after the script's ``Select-Object``.

Use::

    with RecordedPowerShell() as ps:                 # patches PsrpHook.get_conn for the block
        ps.answer("exchange/get_database_stats", [{"Name": "DB01", …}])
        ps.answer("exchange/set_mailbox", error="The operation couldn't be performed because …")
        ps.answer("hyperv/get_vms", timeout=True)    # the WinRM read times out
        ps.answer("x", lambda cmd: [...])           # computed from what was sent
        …run the step with a psrp connection (any host)…
        ps.sent  → [SentCommand(script="exchange/get_database_stats", parameters={…}, conn_host=…)]
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parents[1] / "powershell"
FRAGMENT_SIZE = 32_768


@dataclass
class SentCommand:
    script: str | None          # include/powershell name (``exchange/get_database_stats``) when it is one of ours
    command: str                # the script text or the cmdlet name, as sent
    is_script: bool
    parameters: dict[str, Any]  # name → value as deserialized from the CLIXML (None for a switch)
    arguments: list[Any]
    clixml: str                 # the CreatePipeline message as it travelled
    conn_host: str | None = None


@dataclass
class _Answer:
    output: Any = None
    error: str | None = None
    timeout: bool = False
    hang_up: bool = False
    raw: str | None = None
    when: Callable[[SentCommand], bool] | None = None
    times: int | None = None


@dataclass
class RecordedPowerShell:
    answers: dict[str, list[_Answer]] = field(default_factory=dict)
    sent: list[SentCommand] = field(default_factory=list)

    # -- recordings -------------------------------------------------------------------------------
    def answer(self, script: str, output: Any = None, *, error: str | None = None, timeout: bool = False,
               hang_up: bool = False, raw: str | None = None, when: Callable[[SentCommand], bool] | None = None,
               times: int | None = None) -> RecordedPowerShell:
        """Answer calls of ``script`` (or cmdlet name): ``output`` (JSON-able, or a callable of the
        :class:`SentCommand`), an ``error`` record (pipeline Failed), a read ``timeout``, a ``hang_up``
        or ``raw`` output text. ``when`` restricts it to matching calls; ``times`` to that many calls.
        Later answers for the same script are tried first."""
        self.answers.setdefault(script, []).insert(0, _Answer(output, error, timeout, hang_up, raw, when, times))
        return self

    def calls(self, script: str) -> list[SentCommand]:
        return [c for c in self.sent if c.script == script or c.command == script]

    def _answer_for(self, cmd: SentCommand) -> _Answer | None:
        for ans in self.answers.get(cmd.script or cmd.command, []):
            if ans.times is not None and ans.times <= 0:
                continue
            if ans.when is None or ans.when(cmd):
                if ans.times is not None:
                    ans.times -= 1
                return ans
        return None

    # -- patching ---------------------------------------------------------------------------------
    def __enter__(self) -> RecordedPowerShell:
        from airflow.providers.microsoft.psrp.hooks.psrp import PsrpHook

        endpoint = self
        self._original = PsrpHook.get_conn

        def get_conn(hook):
            # the provider's own get_conn: the connection is looked up and its extras validated for
            # real; only the pool's WinRS shell is replaced (nothing is sent over the network)
            pool = endpoint._original(hook)
            _recorded(endpoint, pool, hook.get_connection(hook.conn_id).host)
            return pool

        PsrpHook.get_conn = get_conn
        return self

    def __exit__(self, *exc) -> None:
        from airflow.providers.microsoft.psrp.hooks.psrp import PsrpHook

        PsrpHook.get_conn = self._original


_NAMES: dict[str, str] | None = None
_LOCK = threading.Lock()


def _script_name(text: str) -> str | None:
    global _NAMES
    with _LOCK:
        if _NAMES is None:
            _NAMES = {p.read_text(encoding="utf-8"): str(p.relative_to(SCRIPTS).with_suffix(""))
                      for p in SCRIPTS.rglob("*.ps1")}
    return _NAMES.get(text)


def _recorded(endpoint: RecordedPowerShell, pool, host) -> None:
    """Make a real pypsrp RunspacePool talk to :class:`_Shell` instead of a WinRM listener."""
    from pypsrp.powershell import RunspacePoolState

    def opened(*args, **kwargs):   # what a Windows Server 2019 answers in SESSION_CAPABILITY
        pool.protocol_version, pool.ps_version, pool.serialization_version = "2.3", "5.1", "1.1.0.1"
        pool.state = RunspacePoolState.OPENED

    def closed(*args, **kwargs):
        pool.state = RunspacePoolState.CLOSED

    pool.open, pool.close, pool.exchange_keys = opened, closed, lambda: None
    pool.shell = _Shell(endpoint, pool, host)


class _Shell:
    """The WinRS shell under the pool: Command/Send carry the CreatePipeline; Receive answers."""

    def __init__(self, endpoint: RecordedPowerShell, pool, host):
        self.endpoint, self.pool, self.host = endpoint, pool, host
        self._buffers: dict[int, list[bytes]] = {}
        self._object_ids = 1 << 40
        self._pending: dict[str, tuple[_Answer | None, SentCommand]] = {}

    # WinRS operations pypsrp's PowerShell uses
    def command(self, executable, arguments=None, no_shell=False, command_id=None):
        import xml.etree.ElementTree as ET

        from pypsrp.wsman import NAMESPACES

        self._feed(base64.b64decode(arguments[0]), command_id)
        response = ET.Element("Body")   # the SOAP body of a WinRS CommandResponse
        rsp = NAMESPACES["rsp"]
        ET.SubElement(ET.SubElement(response, f"{{{rsp}}}CommandResponse"), f"{{{rsp}}}CommandId").text = command_id
        return response

    def send(self, stream, data, end=None, command_id=None):
        self._feed(data, command_id)

    def receive(self, stream="stdout", command_id=None, timeout=None):
        import requests
        from pypsrp.complex_objects import PSInvocationState
        from pypsrp.messages import MessageType, PipelineState
        from pypsrp.serializer import Serializer

        pid = command_id
        answer, cmd = self._pending.pop(pid, (None, None))
        if answer is not None and answer.timeout:
            raise requests.exceptions.ReadTimeout(f"HTTPSConnectionPool(host='{self.host}', port=5986): "
                                                  "Read timed out. (read timeout=30)")
        if answer is not None and answer.hang_up:
            raise requests.exceptions.ConnectionError(f"('Connection aborted.', RemoteDisconnected('{self.host} "
                                                      "closed connection without response'))")
        rpid = self.pool.id
        if answer is None:
            error = f"panelflow PSRP recording: nothing recorded for {cmd.script or cmd.command!r}" if cmd else \
                "panelflow PSRP recording: no pipeline"
        else:
            error = answer.error
        data = b""
        if error is None:
            if answer.raw is not None:
                text = answer.raw
            else:
                output = answer.output(cmd) if callable(answer.output) else answer.output
                text = None if output is None else json.dumps(output)
            if text is not None:
                data += self._message(MessageType.PIPELINE_OUTPUT, Serializer().serialize(text), rpid, pid)
            state = PSInvocationState.COMPLETED
        else:   # the error record first, as a server streams it before the state
            data += self._message(MessageType.ERROR_RECORD, _error_record_xml(error), rpid, pid)
            state = PSInvocationState.FAILED
        data += self._message(MessageType.PIPELINE_STATE, Serializer().serialize(PipelineState(state=state)), rpid, pid)
        return None, None, {"stdout": data}

    def _message(self, message_type: int, xml, rpid: str, pid: str) -> bytes:
        """One PSRP message ([MS-PSRP] 2.2.1) to the client, fragmented ([MS-PSRP] 2.2.4)."""
        import struct
        import xml.etree.ElementTree as ET

        from pypsrp.messages import Destination
        from pypsrp.powershell import Fragment

        body = xml if isinstance(xml, bytes) else ET.tostring(xml, encoding="utf-8", method="xml").split(b"?>", 1)[-1]
        blob = (struct.pack("<I", Destination.CLIENT) + struct.pack("<I", message_type)
                + uuid.UUID(rpid).bytes_le + uuid.UUID(pid).bytes_le + b"\xef\xbb\xbf" + body.strip())
        self._object_ids += 1
        chunks = [blob[i:i + FRAGMENT_SIZE] for i in range(0, len(blob), FRAGMENT_SIZE)]
        return b"".join(Fragment(self._object_ids, n, chunk, start=n == 0, end=n == len(chunks) - 1).pack()
                        for n, chunk in enumerate(chunks))

    def signal(self, *args, **kwargs):
        return None

    def close(self):
        return None

    # decoding
    def _feed(self, data: bytes, command_id):
        """Reassemble PSRP fragments; each complete CREATE_PIPELINE message is decoded and recorded.

        (pypsrp's own ``Message.unpack`` cannot build a server-side CreatePipeline object, so the
        message is read here: 40-byte header, then CLIXML, per [MS-PSRP] 2.2.1.)"""
        import struct

        from pypsrp.messages import MessageType
        from pypsrp.powershell import Fragment

        while data:
            fragment, data = Fragment.unpack(data)
            buffer = self._buffers.setdefault(fragment.object_id, [])
            buffer.append(fragment.data)
            if not fragment.end:
                continue
            blob = b"".join(self._buffers.pop(fragment.object_id))
            if struct.unpack("<I", blob[4:8])[0] != MessageType.CREATE_PIPELINE:
                continue
            pid = str(uuid.UUID(bytes_le=blob[24:40])).upper()
            xml = blob[40:]
            clixml = xml[3:].decode("utf-8") if xml.startswith(b"\xef\xbb\xbf") else xml.decode("utf-8")
            for cmd in _commands(clixml, self.host):
                self.endpoint.sent.append(cmd)
                self._pending[pid] = (self.endpoint._answer_for(cmd), cmd)


def _error_record_xml(text: str) -> bytes:
    """An ERROR_RECORD as Windows PowerShell 5.1 sends it for ``Write-Error`` or a throw (pypsrp
    only ever receives these, so it cannot serialize one)."""
    from xml.sax.saxutils import escape

    msg = escape(text)
    return (
        '<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.ErrorRecord</T><T>System.Object</T></TN>'
        f'<ToString>{msg}</ToString><MS>'
        '<Obj N="Exception" RefId="1"><TN RefId="1"><T>System.Management.Automation.RuntimeException</T>'
        '<T>System.SystemException</T><T>System.Exception</T><T>System.Object</T></TN>'
        f'<ToString>{msg}</ToString><Props><S N="Message">{msg}</S></Props></Obj>'
        '<Nil N="TargetObject" /><S N="FullyQualifiedErrorId">RecordedError</S>'
        '<B N="SerializeExtendedInfo">false</B><I32 N="ErrorCategory_Category">0</I32>'
        '<S N="ErrorCategory_Activity">Write-Error</S><S N="ErrorCategory_Reason">RuntimeException</S>'
        '<S N="ErrorCategory_TargetName"></S><S N="ErrorCategory_TargetType"></S>'
        '<S N="ErrorCategory_Message">NotSpecified: (:) [Write-Error], RuntimeException</S>'
        '</MS></Obj>').encode("utf-8")


def _commands(clixml: str, host) -> list[SentCommand]:
    """The commands of a CreatePipeline's CLIXML: ``PowerShell/Cmds`` → Cmd, IsScript, Args (N, V)."""
    import xml.etree.ElementTree as ET

    from pypsrp.serializer import Serializer

    root = ET.fromstring(clixml)
    serializer = Serializer()
    # a <TNRef> may point at a type-name list defined anywhere earlier in the message (even in parts
    # not decoded here, like MergeMyResult): register every <TN> of the message first
    for tn in root.iter("TN"):
        serializer.tn[tn.attrib["RefId"]] = [t.text for t in tn.findall("T")]
    cmds = root.find("./MS/Obj[@N='PowerShell']/MS/Obj[@N='Cmds']/LST")
    out = []
    for obj in (cmds if cmds is not None else []):
        ms = obj.find("MS")
        text = serializer.deserialize(ms.find("*[@N='Cmd']"), clear=False)
        is_script = (ms.find("*[@N='IsScript']").text or "").lower() == "true"
        parameters: dict[str, Any] = {}
        arguments: list[Any] = []
        args = ms.find("Obj[@N='Args']/LST")
        for arg in (args if args is not None else []):
            ams = arg.find("MS")
            name_el, value_el = ams.find("*[@N='N']"), ams.find("*[@N='V']")
            name = None if name_el is None or name_el.tag == "Nil" else serializer.deserialize(name_el, clear=False)
            value = None if value_el is None or value_el.tag == "Nil" else serializer.deserialize(value_el, clear=False)
            if name is None:
                arguments.append(value)
            else:
                parameters[name] = value
        out.append(SentCommand(script=_script_name(text) if is_script else None, command=text,
                               is_script=is_script, parameters=parameters, arguments=arguments,
                               clixml=clixml, conn_host=host))
    return out


def psrp_connection(host: str = "backend.test", login: str = "svc-panelflow", password: str = "recorded-only",
                    **extra) -> str:
    """An ``AIRFLOW_CONN_…`` JSON for a psrp connection (the recorded endpoint ignores credentials)."""
    return json.dumps({"conn_type": "psrp", "host": host, "login": login, "password": password,
                       "extra": extra})

