"""Command-line flags derived from the config dataclasses, and configs built back from them.

A setting is declared once, as a `keraslm.config.setting` field (name, type, default, help,
choices); adding one there adds its flag to every command that takes that config.
"""

import dataclasses
import sys
import typing

from absl import flags

FLAGS = flags.FLAGS


def _flag_fields(cls):
    return [field for field in dataclasses.fields(cls) if field.metadata.get("flag")]


def _sections(cls):
    """Fields that hold a nested config dataclass (RunConfig's tokenizer, model, train)."""
    hints = typing.get_type_hints(cls)
    return [field for field in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[field.name])]


def define_flags(cls, names=None, help_override=None, module_name=None):
    """Defines an absl flag for every setting of `cls` and of its nested sections.

    names: only these settings (a command that shares a few of training's flags, say).
    help_override: {name: help text} where the command uses the setting differently.
    The flags belong to the calling module (the command's), as if it had defined them itself:
    absl's --help lists a command's own flags by module.
    """
    if module_name is None:
        # What absl records for a DEFINE call made in the caller: its module, or for a script
        # run as __main__, sys.argv[0].
        module_name = sys._getframe(1).f_globals.get("__name__")  # pylint: disable=protected-access
        module_name = sys.argv[0] if module_name == "__main__" else module_name
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for field in _flag_fields(cls):
        if names is not None and field.name not in names:
            continue
        kind, default = hints[field.name], getattr(defaults, field.name)
        help_text = (help_override or {}).get(field.name, field.metadata["help"])
        if field.metadata.get("choices"):
            flags.DEFINE_enum(field.name, default, field.metadata["choices"], help_text, module_name=module_name)
        elif kind in (bool, typing.Optional[bool]):
            flags.DEFINE_bool(field.name, default, help_text, module_name=module_name)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, help_text, module_name=module_name)
        elif kind is float:
            flags.DEFINE_float(field.name, default, help_text, module_name=module_name)
        elif kind is str and field.metadata.get("repeatable"):
            # Repeats accumulate (a --flagfile's occurrences too); from_flags joins them with commas.
            flags.DEFINE_multi_string(
                field.name, [default] if default else [], f"{help_text} (repeatable)", module_name=module_name
            )
        elif kind is str:
            flags.DEFINE_string(field.name, default, help_text, module_name=module_name)
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag type for {kind}")
    for field in _sections(cls):
        define_flags(hints[field.name], names, help_override, module_name)


def flag_names(cls):
    """The flags define_flags(cls) defines for `cls` itself (not its sections)."""
    return [field.name for field in _flag_fields(cls)]


def from_flags(cls):
    """An instance of `cls` with every setting taken from the parsed flags."""
    hints = typing.get_type_hints(cls)
    values = {field.name: _value(field) for field in _flag_fields(cls)}
    values.update({field.name: from_flags(hints[field.name]) for field in _sections(cls)})
    return cls(**values)


def _value(field):
    value = FLAGS[field.name].value
    if field.metadata.get("repeatable"):
        return ",".join(value or [])
    return value
