"""Every public name users import today still imports from the same place.

``PUBLIC_NAMES`` is the public surface (each module's ``__all__``, and the
console-script entry points) as it stood before the modules were split into
smaller rooms: moving code must keep a re-export at the old place.  The
imports written in the README and docs/ are checked too, as they are written.
"""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

PUBLIC_NAMES: dict[str, tuple[str, ...]] = {
    "periodic_fast": (
        "Client",
        "ClientCluster",
        "SyncClient",
        "Worker",
        "WorkerCluster",
        "__version__",
    ),
    "periodic_fast.auth": (
        "AuthFile",
        "AuthFileError",
        "AuthRules",
        "Identity",
        "Role",
        "load_auth_file",
        "parse_auth_file",
    ),
    "periodic_fast.cli": (
        "app",
        "main",
        "periodicd_app",
        "periodicd_main",
    ),
    "periodic_fast.cli_client": (
        "periodic_run",
        "periodic_run_main",
        "periodic_run_pipe",
        "periodic_run_pipe_main",
    ),
    "periodic_fast.cli_keygen": (
        "keygen",
        "write_key_pair",
    ),
    "periodic_fast.client": (
        "Address",
        "Client",
        "ClientError",
        "Connection",
        "ConnectionLost",
        "NoWorkerError",
        "NotConnected",
        "RequestRejected",
        "RequestTimeout",
        "StreamCallback",
        "parse_address",
        "resolve_address",
        "to_bytes",
    ),
    "periodic_fast.cluster": (
        "ClientCluster",
        "KetamaRing",
        "WorkerCluster",
    ),
    "periodic_fast.codec": (
        "IMPLEMENTATION",
        "Packet",
        "Parser",
        "decode_handle",
        "decode_identity",
        "decode_job",
        "decode_job_list",
        "decode_payload",
        "decode_status",
        "encode_handle",
        "encode_identity",
        "encode_job",
        "encode_job_list",
        "encode_payload",
        "encode_registration",
        "encode_registration_reply",
        "encode_request",
        "encode_request_into",
        "encode_response",
        "encode_response_into",
        "encode_status",
    ),
    "periodic_fast.constants": (
        "ADDRESS_ENV",
        "CONFIG_DEFAULTS",
        "ClientType",
        "Command",
        "DEFAULT_ADDRESS",
        "DEFAULT_MAX_FRAME",
        "EMPTY_PAYLOAD_COMMANDS",
        "HEADER_SIZE",
        "MAGIC_REQUEST",
        "MAGIC_RESPONSE",
        "MAX_COMMAND",
        "MSGID_SIZE",
        "RESULT_EXPIRED",
        "RESULT_FAILED",
        "RESULT_REMOVED",
        "STREAM_EOF",
    ),
    "periodic_fast.errors": (
        "BadMagic",
        "BadRegistration",
        "CRCMismatch",
        "FrameTooLarge",
        "PeriodicError",
        "ProtocolError",
        "TrailingBytes",
        "TruncatedPayload",
        "UnknownCommand",
    ),
    "periodic_fast.exec_worker": (
        "WorkerOptions",
        "format_size",
        "group_rss",
        "make_handler",
        "make_worker",
        "parse_output",
        "parse_size",
        "run_exec_worker",
    ),
    "periodic_fast.job": (
        "FuncStat",
        "Job",
        "JobState",
    ),
    "periodic_fast.pipe_worker": (
        "PipeRunner",
        "RunnerPool",
        "make_pipe_handler",
        "run_pipe_worker",
    ),
    "periodic_fast.rec": (
        "EPOCH_MASK",
        "IMPLEMENTATION",
        "JobRec",
        "NameTable",
    ),
    "periodic_fast.rsa_transport": (
        "DEFAULT_PUBLIC_PATH",
        "MODES",
        "RSAConfig",
        "RSAHandshakeError",
        "RSAModeName",
        "RSAUnavailable",
    ),
    "periodic_fast.scheduler": (
        "ADMIN_COMMANDS",
        "ConnInfo",
        "Event",
        "FuncDetail",
        "Histogram",
        "LockInfo",
        "Scheduler",
        "SchedulerStats",
        "WORKER_COMMANDS",
    ),
    "periodic_fast.server": (
        "AddressInUse",
        "SchedulerLike",
        "Server",
        "ServerProtocol",
        "parse_address",
        "run",
    ),
    "periodic_fast.server.app": (
        "Address",
        "AddressInUse",
        "NO_UVLOOP_ENV",
        "SchedulerFactory",
        "Server",
        "new_event_loop",
        "parse_address",
        "run",
    ),
    "periodic_fast.server.http": (
        "DEFAULT_MAX_BODY",
        "HttpApp",
        "HttpConnection",
        "HttpError",
        "Request",
        "Response",
        "looks_like_http",
    ),
    "periodic_fast.server.metrics": (
        "CONTENT_TYPE",
        "Snapshot",
        "render",
        "snapshot",
    ),
    "periodic_fast.server.protocol": (
        "DEFAULT_MAX_OUTPUT",
        "DEFAULT_REGISTRATION_TIMEOUT",
        "Hub",
        "SchedulerLike",
        "ServerProtocol",
    ),
    "periodic_fast.server.secure": (
        "AES_CHUNK",
        "KeyFileError",
        "KeyRing",
        "MAX_RECORD",
        "RSAMode",
        "SecureConfig",
        "SecureProtocol",
        "fingerprint",
        "load_private_key",
        "load_public_keys",
        "parse_modes",
    ),
    "periodic_fast.store": (
        "RecordStore",
        "Store",
        "StoreSnapshot",
        "open_store",
    ),
    "periodic_fast.store.memory": ("MemoryStore",),
    "periodic_fast.store.postgres": (
        "PostgresStore",
        "PostgresStoreError",
        "parse_postgres_uri",
    ),
    "periodic_fast.store.sqlite": (
        "SqliteStore",
        "SqliteStoreError",
        "default_path",
        "parse_file_uri",
    ),
    "periodic_fast.sync": ("SyncClient",),
    "periodic_fast.testing": (
        "ServerProcess",
        "free_port",
        "running_server",
        "wait_listening",
    ),
    "periodic_fast.testing_pg": (
        "PostgresCluster",
        "PostgresCommandError",
        "PostgresUnavailable",
        "find_pg_bindir",
    ),
    "periodic_fast.wheel": (
        "DEFAULT_CASCADE_CHUNK",
        "IMPLEMENTATION",
        "LEVELS",
        "MAX_JOB_ID",
        "MAX_TIME",
        "MIN_TIME",
        "SLOTS",
        "TimerWheel",
    ),
    "periodic_fast.worker": (
        "Done",
        "Fail",
        "FinishedError",
        "Handler",
        "SchedLater",
        "Worker",
        "WorkerJob",
    ),
}

# console scripts: name -> "module:function" (pyproject.toml [project.scripts])
_SCRIPT = re.compile(r'^([\w-]+)\s*=\s*"([\w.]+):(\w+)"', re.MULTILINE)


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES))
def test_public_names_still_import(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in PUBLIC_NAMES[module] if not hasattr(mod, n)]
    assert missing == []


def test_all_lists_only_real_names() -> None:
    for module in PUBLIC_NAMES:
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            assert hasattr(mod, name), f"{module}.__all__ names {name}"


def test_console_scripts_resolve() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = _SCRIPT.findall(section)
    assert {name for name, _, _ in scripts} >= {"periodic", "periodicd"}
    for _, module, func in scripts:
        assert callable(getattr(importlib.import_module(module), func))


_DOC_IMPORT = re.compile(
    r"^\s*from (periodic_fast[\w.]*) import (\([^)]*\)|[\w, ]+)", re.MULTILINE
)


def _documented_imports() -> list[tuple[str, str]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for module, names in _DOC_IMPORT.findall(doc.read_text()):
            for name in names.strip("()").split(","):
                name = name.split("#")[0].split(" as ")[0].strip()
                if name:
                    found.append((module, name))
    return sorted(set(found))


def test_the_docs_show_imports() -> None:
    assert ("periodic_fast.client", "Client") in _documented_imports()


@pytest.mark.parametrize(("module", "name"), _documented_imports())
def test_documented_import_works(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name)
