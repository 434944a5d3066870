"""Reading newsletter.toml (found here or above, like git) and the NEWSLETTER_*
overrides into a Config: unknown keys get "did you mean", wrong types name the key."""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as dt
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from newsletter.config.rules import validate
from newsletter.config.sections import (
    CONFIG_NAME,
    ENV_CONFIG,
    ENV_PREFIX,
    Bounces,
    Check,
    Config,
    ConsoleSettings,
    Database,
    Dkim,
    Paths,
    Preview,
    Publication,
    Sample,
    Schedule,
    Signup,
    Smtp,
    Sponsor,
    Tracking,
    Utm,
    Workers,
    did_you_mean,
)
from newsletter.errors import ConfigError
from newsletter.fileio import read_text

SECTIONS: dict[str, type] = {
    "publication": Publication,
    "paths": Paths,
    "database": Database,
    "smtp": Smtp,
    "schedule": Schedule,
    "utm": Utm,
    "sample": Sample,
    "preview": Preview,
    "tracking": Tracking,
    "dkim": Dkim,
    "signup": Signup,
    "workers": Workers,
    "bounces": Bounces,
    "check": Check,
    "console": ConsoleSettings,
}


_SPONSOR_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


_TOO_DEEP = "arrays or inline tables nested too deeply"


def find_config(start: Path | None = None) -> Path:
    """NEWSLETTER_CONFIG if set, else newsletter.toml here or in a parent folder."""
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} here or above {here}; run `newsletter init` to create one,"
        " or pass --config PATH"
    )


def load(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration file, applying environment overrides."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    # read_text names the line of a bad byte and drops a BOM, which tomllib rejects.
    raw_text = read_text(path, ConfigError)
    try:
        data = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        # tomllib reads arrays and inline tables recursively: a value nested some thousand
        # levels deep ("a = [[[[...") runs out of stack before anything else is wrong.
        raise ConfigError(f"{path}: invalid TOML: {_TOO_DEEP}") from None
    return _build(path.resolve(), data, environ)


def _build(path: Path, data: dict[str, Any], environ: Mapping[str, str]) -> Config:
    known = [*SECTIONS, "sponsors", "segments"]
    for section in data:
        if section not in known:
            raise ConfigError(f"{path}: unknown section [{section}]{did_you_mean(section, known)}")
        if not isinstance(data[section], dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
    if "publication" not in data:
        raise ConfigError(f"{path}: missing section [publication]")

    smtp_tables = {k: v for k, v in data.get("smtp", {}).items() if isinstance(v, dict)}
    data = {
        **data,
        "smtp": {k: v for k, v in data.get("smtp", {}).items() if k not in smtp_tables},
    }
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        sections[name] = _section(path, name, cls, data.get(name, {}), environ)
    servers = _smtp_servers(path, sections["smtp"], smtp_tables, environ)

    sponsors, default = _sponsors(path, data.get("sponsors", {}), environ)
    config = Config(
        path=path,
        sponsors=sponsors,
        default_sponsor=default,
        smtp_servers=servers,
        segments=dict(data.get("segments", {})),
        **sections,
    )
    validate(config)
    _refuse_unknown_variables(path, config, environ)
    return config


# NEWSLETTER_* variables that are not overrides and are always allowed: the config's
# path, the default secret, and the test harness's services (tests/services.py).
OWN_VARIABLES = frozenset(
    {
        ENV_CONFIG,
        "NEWSLETTER_SECRET",
        "NEWSLETTER_TEST_POSTGRES_URL",
        "NEWSLETTER_CHROMIUM",
        "NEWSLETTER_DOVECOT",
    }
)


def override_names(config: Config) -> set[str]:
    """Every NEWSLETTER_<SECTION>_<KEY> that overrides a key of this config."""
    tables: list[tuple[str, type]] = [*SECTIONS.items()]
    tables += [(f"smtp.{name}", Smtp) for name in config.smtp_servers]
    tables += [(f"sponsors.{sid}", Sponsor) for sid in config.sponsors]
    names = {f"{ENV_PREFIX}SPONSORS_DEFAULT"}
    for where, cls in tables:
        env_section = where.replace(".", "_").upper()
        names.update(
            f"{ENV_PREFIX}{env_section}_{key.upper()}"
            for key in _fields(cls)
            if not (cls is Sponsor and key == "id")
        )
    return names


def named_variables(config: Config) -> set[str]:
    """The variables the config's `*_env` keys name (secret_env, password_env, ...)."""
    tables = [getattr(config, name) for name in SECTIONS]
    tables += [*config.smtp_servers.values(), *config.sponsors.values()]
    names: set[str] = set()
    for table in tables:
        for key, f in _fields(type(table)).items():
            value = getattr(table, f.name)
            if key.endswith(("_env", "_envs")) and value:
                names.update([value] if isinstance(value, str) else value)
    return names


def _refuse_unknown_variables(path: Path, config: Config, environ: Mapping[str, str]) -> None:
    """A NEWSLETTER_* variable that overrides no key is a typo (NEWSLETTER_SMTP_PROT),
    refused like an unknown key in the file rather than silently ignored."""
    overrides = override_names(config)
    allowed = overrides | OWN_VARIABLES | named_variables(config)
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in allowed:
            continue
        # Compare without the common prefix, which would make every name look close.
        short = {o.removeprefix(ENV_PREFIX): o for o in overrides}
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), short, n=1)
        hint = f" (did you mean {short[close[0]]}?)" if close else ""
        raise ConfigError(f"{path}: {name} is set but overrides no key{hint}")


def _smtp_servers(
    path: Path, base: Smtp, tables: dict[str, Any], environ: Mapping[str, str]
) -> dict[str, Smtp]:
    inherited = {key: getattr(base, f.name) for key, f in _fields(Smtp).items()}
    servers = {}
    for name, values in tables.items():
        if not _SPONSOR_ID.match(name):
            raise ConfigError(
                f"{path}: [smtp.{name}]: a server name is lowercase letters, digits, '-' or '_'"
            )
        servers[name] = _section(path, f"smtp.{name}", Smtp, {**inherited, **values}, environ)
    return servers


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}


def _section(
    path: Path,
    where: str,
    cls: type,
    values: dict[str, Any],
    environ: Mapping[str, str],
    fixed: dict[str, Any] | None = None,
) -> Any:
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    settable = [k for k in fields if k not in (fixed or {})]
    for key in values:
        if key not in settable:
            raise ConfigError(
                f"{path}: unknown key {key!r} in [{where}]{did_you_mean(key, settable)}"
            )
    kwargs: dict[str, Any] = dict(fixed or {})
    env_section = where.replace(".", "_").upper()
    for key in settable:
        f = fields[key]
        expected = hints[f.name]
        env_name = f"{ENV_PREFIX}{env_section}_{key.upper()}"
        if env_name in environ:
            value = _from_env(path, env_name, environ[env_name], expected)
            label = f"{env_name} (overriding [{where}] {key})"
        elif key in values:
            value = values[key]
            label = f"[{where}] {key}"
        else:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing key {key!r} in [{where}]")
            continue
        kwargs[f.name] = _coerce(path, label, value, expected)
    return cls(**kwargs)


def _from_env(path: Path, name: str, text: str, expected: Any) -> Any:
    if expected is str:
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        # Not a TOML literal: let _coerce report the type mismatch.
        return text
    except RecursionError:
        raise ConfigError(f"{path}: {name}: {_TOO_DEEP}") from None


def _coerce(path: Path, label: str, value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        # TOML has nan and inf (and integers of any size, which float() may not hold): no
        # number of seconds or messages per second is either, and every comparison with
        # nan is false, so `timeout <= 0` would let it through.
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path}: {label}: expected a finite number, got {value!r}")
        return number
    if expected in (str, int, float, bool):
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            return value
        raise ConfigError(
            f"{path}: {label}: expected {_type_name(expected)}, got {_type_name(type(value))}"
            f" {value!r}"
        )
    if origin in (dict, collections.abc.Mapping):
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
        raise ConfigError(f"{path}: {label}: expected a table of strings, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{path}: {label}: expected a list of strings, got {value!r}")
    if expected is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: {label}: expected a date like 2026-12-01, got {value!r}")
    if origin in (types.UnionType, typing.Union):
        inner = [t for t in typing.get_args(expected) if t is not type(None)]
        return _coerce(path, label, value, inner[0])
    raise AssertionError(f"unsupported config type {expected!r}")


def _type_name(tp: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(tp, tp.__name__)


def _sponsors(
    path: Path, data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Sponsor], str | None]:
    sponsors: dict[str, Sponsor] = {}
    default = environ.get(f"{ENV_PREFIX}SPONSORS_DEFAULT", data.get("default"))
    for sponsor_id, values in data.items():
        if sponsor_id == "default":
            continue
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: [sponsors] {sponsor_id}: expected a table [sponsors.{sponsor_id}]"
                f" or the key 'default'"
            )
        if not _SPONSOR_ID.match(sponsor_id) or sponsor_id == "none":
            raise ConfigError(
                f"{path}: [sponsors.{sponsor_id}]: a sponsor id is lowercase letters, digits,"
                " '-' or '_', and not 'none'"
            )
        sponsors[sponsor_id] = _section(
            path, f"sponsors.{sponsor_id}", Sponsor, values, environ, fixed={"id": sponsor_id}
        )
    if default is not None:
        if not isinstance(default, str):
            raise ConfigError(f"{path}: [sponsors] default: expected a string, got {default!r}")
        if default == "none":
            default = None
        elif default not in sponsors:
            raise ConfigError(
                f"{path}: [sponsors] default: unknown sponsor {default!r}"
                f"{did_you_mean(default, sponsors)}"
            )
    elif len(sponsors) == 1:
        default = next(iter(sponsors))
    elif sponsors:
        raise ConfigError(f"{path}: [sponsors] default: missing; name one of {sorted(sponsors)}")
    return sponsors, default
