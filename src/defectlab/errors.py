"""The one base class of defectlab's expected errors.

Every error that is the user's to fix (a setting, a file, a server) derives
from `DefectlabError`, so the CLI turns all of them into one clear line.
"""


class DefectlabError(Exception):
    """A problem the user can fix; its message names the setting, file or server."""


# How a message names a setting: the way the user set it. The CLI says which
# (`set_setting_style`); the library's own default is a keyword argument.
SETTING_STYLES = ("python", "cli", "mlproject")
_setting_style = {"current": "python"}


def set_setting_style(style: str) -> None:
    """``cli`` (``--name value``), ``mlproject`` (``-P name=value``) or ``python`` (``name=value``)."""
    if style not in SETTING_STYLES:
        raise ValueError(f"style must be one of {', '.join(SETTING_STYLES)}, got {style!r}")
    _setting_style["current"] = style


def spell_setting(name: str, value) -> str:
    """A setting as the user would type it in the current style, e.g. ``--backbone pixels``."""
    style = _setting_style["current"]
    if style == "cli":
        return f"--{name.replace('_', '-')} {value}"
    if style == "mlproject":
        return f"-P {name}={value}"
    return f"{name}={value}"
