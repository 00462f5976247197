"""The one settings object (its sections, every tunable with its default and reason: ``core.sections``).

Values are resolved in this order (later wins):

1. the defaults (``core.sections``);
2. ``<home>/shoesearch.toml`` (sections named like the dataclasses: ``[denoise]``, ``[train]`` ...);
3. environment variables ``SHOESEARCH_<SECTION>__<FIELD>`` (e.g. ``SHOESEARCH_TRAIN__EPOCHS=5``);
4. explicit overrides from the CLI (``--set section.field=value``) or a flow parameter.

:func:`setting_sources` says which of these layers gave each value (``shoesearch settings --explain``).

pydantic-settings does the layering and reads every value as its field's type: :class:`Settings`
is a ``BaseSettings`` whose sources are the overrides (init arguments), the environment and the TOML
file, and each section is a pydantic dataclass (so ``dataclasses.asdict`` / ``replace`` / ``fields``
work on it; assigning an attribute is not validated). :meth:`Settings.load` reads these sources;
``Settings()`` alone gives the defaults.

Text values (environment, ``--set``, a string in the TOML file) are read as the field's type: a bool
is ``true``/``false``/``1``/``0``/``yes``/``no``/``on``/``off``; a list (or a tuple such as
``train.split_fractions``) is a JSON list (``SHOESEARCH_CRAWL__KEYWORDS='["鞋", "靴子"]'``) or
``;``-separated items (``鞋;靴子``; not ``,``: JD category ids such as ``1318,12099,9756`` contain
commas), and ``""`` is the empty list; ``""``/``none``/``null`` is "not set" for an optional number.
An unknown section or field (in ``--set``, the TOML file or a ``SHOESEARCH_X__Y`` variable), a value
that cannot be read as its type, or one outside its range (every numeric setting has one: ``core.sections``;
NaN and infinity are outside every float's) is a one-line :class:`~core.errors.ShoesearchError` naming the
setting, the value and what is allowed.
``Settings.as_overrides()`` is every effective value: the CLI hands it to each flow (and a flow to
its DDP ranks), so every step runs with exactly the settings the command resolved.

The data home defaults to ``./data`` and is overridden by ``SHOESEARCH_HOME`` or ``--home``;
every path is derived from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from contextvars import ContextVar
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import tomllib
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from core.sections import (  # noqa: F401 - the sections are imported from here too
    SECTIONS,
    ApiSettings,
    BadSettingValue,
    ComputeSettings,
    CrawlSettings,
    DenoiseSettings,
    EmbedSettings,
    IndexSettings,
    RaySettings,
    ScheduleSettings,
    SqlSettings,
    TrainSettings,
    UnknownSetting,
)
from core.setting_text import bare_type, readable_as

SECRET_SETTINGS = ("api.write_token",)  # never carried into flows, recorded, or printed: only whether set

ENV_HOME = "SHOESEARCH_HOME"
ENV_PREFIX = "SHOESEARCH_"
CONFIG_FILE = "shoesearch.toml"


    # (Pillow keeps RGB at 4 bytes/pixel: 160 MB at 40 Mpx; RGBA twice that); more would only queue on 2 cores


_LOADING: ContextVar[Path | None] = ContextVar("shoesearch_settings_toml", default=None)  # set by Settings.load


class _HomePath:
    """A read-only path under ``settings.home`` (a class attribute, not a setting)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, settings, owner=None) -> Path:
        return self if settings is None else settings.home / self.name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__",
        enable_decoding=False,  # env text goes to the fields as it is: `鞋;靴子` is a list, not bad JSON
        extra="forbid", ignored_types=(_HomePath,))

    home: Path = Field(default_factory=lambda: Path(os.environ.get(ENV_HOME) or "data"))
    crawl: CrawlSettings = Field(default_factory=CrawlSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    denoise: DenoiseSettings = Field(default_factory=DenoiseSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    sql: SqlSettings = Field(default_factory=SqlSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    ray: RaySettings = Field(default_factory=RaySettings)

    @field_validator("home")
    @classmethod
    def _resolve_home(cls, home: Path) -> Path:
        return Path(home).expanduser().resolve()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """First wins: overrides (init arguments) > environment > ``<home>/shoesearch.toml`` > defaults.
        ``Settings(...)`` outside :meth:`load` reads only its arguments (no environment, no file)."""
        toml_file = _LOADING.get()
        if toml_file is None:
            return (init_settings,)
        return init_settings, _EnvSource(settings_cls), _TomlSource(settings_cls, toml_file)

    # --- derived paths (all under the home) ----------------------------------------------
    warehouse_dir = _HomePath("warehouse")
    images_dir = _HomePath("images")
    crawl_dir = _HomePath("crawl")
    models_dir = _HomePath("models")
    indexes_dir = _HomePath("indexes")
    reports_dir = _HomePath("reports")
    views_path = _HomePath("catalog.duckdb")
    snapshot_path = _HomePath("snapshot.duckdb")
    config_path = _HomePath(CONFIG_FILE)

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, home: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
        """Defaults, then ``home/shoesearch.toml``, then env, then ``overrides`` ("section.field": value)."""
        home_path = Path(home) if home else Path(os.environ.get(ENV_HOME) or "data")
        nested: dict[str, dict[str, Any]] = {}
        for dotted, value in (overrides or {}).items():
            if value is not None:
                section_name, key = _known(dotted)
                nested.setdefault(section_name, {})[key] = value
        token = _LOADING.set(home_path.expanduser().resolve() / CONFIG_FILE)
        try:
            return cls(home=home_path, **nested)
        except ValidationError as exc:
            raise _explained(exc) from None
        finally:
            _LOADING.reset(token)

    def set(self, dotted: str, value: Any) -> None:
        """Set ``section.field`` with type coercion; unknown names raise a clear error."""
        section_name, key = _known(dotted)
        target = getattr(self, section_name)
        try:
            type(target).__pydantic_validator__.validate_assignment(target, key, value)
        except ValidationError as exc:
            raise _explained(exc, prefix=(section_name,)) from None

    def as_dict(self) -> dict[str, Any]:
        return {"home": str(self.home), **{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}}

    def as_overrides(self) -> dict[str, Any]:
        """Every setting as ``"section.field": value`` (JSON-able): what the CLI hands a flow, a deployment
        run or a DDP rank, so that ``Settings.load(home, that)`` reproduces exactly these settings. Secrets
        (:data:`SECRET_SETTINGS`) are left out: flow parameters are stored by Prefect, and no step needs them
        (a process that does reads them from the environment or the home's file)."""
        return {dotted: value for dotted, value in self._every_value().items() if dotted not in SECRET_SETTINGS}

    def shown(self) -> dict[str, Any]:
        """Every setting as :meth:`as_overrides` names it, a secret shown only as set (``"(set)"``) or not (``""``):
        what a run records and ``shoesearch settings`` prints."""
        return {dotted: ("(set)" if value else "") if dotted in SECRET_SETTINGS else value
                for dotted, value in self._every_value().items()}

    def _every_value(self) -> dict[str, Any]:
        return {f"{name}.{key}": list(value) if isinstance(value, tuple) else value
                for name in SECTIONS for key, value in dataclasses.asdict(getattr(self, name)).items()}

    def section_json(self, name: str) -> str:
        return json.dumps(dataclasses.asdict(getattr(self, name)), sort_keys=True, default=str)

    def sources(self, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> dict[str, list[tuple[str, Any]]]:
        """Where each setting that a layer gives got its value (see :func:`setting_sources`): this home's
        ``shoesearch.toml``, ``environ`` (default: the environment) and ``overrides`` (``--set``)."""
        path = self.config_path
        toml_data = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return setting_sources(toml_data, os.environ if environ is None else environ, overrides or {})


def setting_sources(toml_data: dict[str, Any], environ: dict[str, str],
                    overrides: dict[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    """For each ``"section.field"`` a layer sets, the layers that set it, the one in force first:
    ``("--set", text)``, ``("env SHOESEARCH_<SECTION>__<FIELD>", text)``, ``("shoesearch.toml", value)`` (the
    home's file), as :meth:`Settings.load` reads them (env names in any case; a ``None`` override is
    not given). A setting no layer sets has its default and is not in the answer. Pure: nothing is read."""
    found: dict[str, list[tuple[str, Any]]] = {}
    for dotted, value in overrides.items():
        if value is not None:
            found.setdefault(dotted, []).append(("--set", value))
    for name in sorted(environ):
        rest = name[len(ENV_PREFIX):] if name.upper().startswith(ENV_PREFIX) else ""
        if "__" in rest:
            section_name, _, key = rest.lower().partition("__")
            found.setdefault(f"{section_name}.{key}", []).append((f"env {name}", environ[name]))
    for section_name, values in toml_data.items():
        for key, value in (values.items() if isinstance(values, dict) else []):
            found.setdefault(f"{section_name}.{key}", []).append((CONFIG_FILE, value))
    return found


# --- sources -----------------------------------------------------------------------------
class _EnvSource(EnvSettingsSource):
    """``SHOESEARCH_<SECTION>__<FIELD>`` variables only, as before (``SHOESEARCH_HOME`` is read by
    :meth:`Settings.load`; other ``SHOESEARCH_*`` names without ``__`` are not settings); an unknown
    section or field in such a name is an error."""

    def _load_env_vars(self):
        env_vars, prefix = {}, self.env_prefix if self.case_sensitive else self.env_prefix.lower()
        for name, value in super()._load_env_vars().items():  # names lower-cased unless case_sensitive
            if name.startswith(prefix) and "__" in name[len(prefix):]:
                section_name, _, key = name[len(prefix):].partition("__")
                _known(f"{section_name}.{key}")
                env_vars[name] = value
        return env_vars


class _TomlSource(TomlConfigSettingsSource):
    """``<home>/shoesearch.toml``: ``[section]`` tables of known fields."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        try:
            super().__init__(settings_cls, toml_file)
        except tomllib.TOMLDecodeError as exc:
            raise BadSettingValue(f"{toml_file}: not valid TOML ({exc})") from None
        for section_name, values in self.toml_data.items():
            for key in values if isinstance(values, dict) else [""]:  # a top-level `x = 1` is no setting
                _known(f"{section_name}.{key}")


# --- names, text and errors --------------------------------------------------------------
def _known(dotted: str) -> tuple[str, str]:
    """``"section.field"`` split in two, or :class:`UnknownSetting` naming the valid names."""
    section_name, _, key = dotted.partition(".")
    if section_name not in SECTIONS:
        raise UnknownSetting(f"unknown settings section {section_name!r}; known: {', '.join(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section_name])]
    if key not in names:
        raise UnknownSetting(f"unknown setting {dotted!r}; known: {', '.join(sorted(names))}")
    return section_name, key


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args if a is not NoneType) + " (or none)"
    if origin is list:
        return f"list of {_type_name(args[0])} (a JSON list or ;-separated items)"
    if origin is tuple:
        return f"{len(args)} {_type_name(args[0])}s (a JSON list or ;-separated items)"
    if origin is Literal:
        return f"one of {', '.join(map(repr, args))}"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _range(annotation: Any, metadata: list) -> str:
    """A field's valid values in words ("an integer >= 1 and <= 65535", "a finite number > 0"), from its
    ``Field`` constraints at every level (``core.sections``); "" when it has none."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _range(args[0], [*metadata, *(m for info in args[1:] for m in getattr(info, "metadata", [info]))])
    if origin in (Union, UnionType):
        inner = " or ".join(r for r in (_range(a, metadata) for a in args if a is not NoneType) if r)
        return f"{inner}, or none" if inner else ""
    if origin is tuple:
        return f"{len(args)} numbers, each {_range(args[0], metadata)}"
    pattern = next((m.pattern for m in metadata if getattr(m, "pattern", None)), None)
    if pattern:
        return f"text matching {pattern}"
    bounds = [f"{word} {getattr(m, name)}" for m in metadata for name, word in _BOUNDS if hasattr(m, name)]
    finite = any(getattr(m, "allow_inf_nan", True) is False for m in metadata)
    kind = "an integer" if annotation is int else "a finite number" if finite else "a number"
    return f"{kind} {' and '.join(bounds)}".strip() if bounds or finite else ""


def _explained(exc: ValidationError, prefix: tuple[str, ...] = ()) -> BadSettingValue:
    """pydantic's first error (at ``section[, field[, item]]``: names are checked before) as one line: a value
    that cannot be read as its type, one outside its range (naming the range), or a check across fields."""
    error = exc.errors()[0]
    section_name, *loc = (*prefix, *map(str, error["loc"]))
    detail = str(error.get("ctx", {}).get("error", ""))
    if not loc:  # a section's check across its fields: its message names them
        return BadSettingValue(f"settings: {detail or error['msg']}")
    key, *item = loc
    info = SECTIONS[section_name].__pydantic_fields__[key]
    bare = bare_type(info.annotation)
    at = f" (item {'.'.join(item)})" if item else ""
    if not readable_as(get_args(bare)[0] if item else bare, error["input"]):
        where = f" (item {'.'.join(item)}: {error['msg']})" if item else ""
        return BadSettingValue(f"setting {section_name}.{key}: cannot read {error['input']!r} as {_type_name(bare)}"
                               f"{where}")
    because = f": {detail}" if detail else ""
    verb = "is out of range" if {int, float} & {bare, *get_args(bare)} else "is not allowed"
    return BadSettingValue(f"setting {section_name}.{key}: {error['input']!r}{at} {verb}{because} "
                           f"(allowed: {_range(info.annotation, info.metadata) or error['msg']})")
