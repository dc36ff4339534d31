"""TFDS builders for the project's text datasets (array_record, readable without TensorFlow).

Importing this package registers the builders with TFDS as `ldlg_e2e`, `ldlg_rocstories`, `ldlg_sst`,
`ldlg_sst2`, `ldlg_ag_news` (configs `paper`, `clean`) and `ldlg_qqp`. Use `ldlg.data.datasets.load_split`
rather than the builders directly.
"""

from ldlg.data.builders._common import DataFile, LdlgBuilder, MissingDataError
from ldlg.data.builders.ag_news import LdlgAgNews
from ldlg.data.builders.e2e import LdlgE2e
from ldlg.data.builders.qqp import LdlgQqp
from ldlg.data.builders.rocstories import LdlgRocstories
from ldlg.data.builders.sst import LdlgSst
from ldlg.data.builders.sst2 import LdlgSst2

__all__ = ["DataFile", "LdlgBuilder", "MissingDataError", "LdlgAgNews", "LdlgE2e", "LdlgQqp",
           "LdlgRocstories", "LdlgSst", "LdlgSst2"]
