"""The one base class of defectlab's expected errors.

Every error that is the user's to fix (a setting, a file, a server) derives
from `DefectlabError`, so the CLI turns all of them into one clear line.
"""


class DefectlabError(Exception):
    """A problem the user can fix; its message names the setting, file or server."""
