"""The operator's metrics are the ones docs/install.md lists, no more and no fewer."""

import re
from pathlib import Path

from promptopt_operator.metrics import OperatorMetrics

INSTALL = Path(__file__).parents[2] / "docs" / "install.md"


def test_the_install_guide_lists_every_metric_the_operator_serves():
    served = {family.name for family in OperatorMetrics(lambda: []).registry.collect()}
    listed = {
        re.sub(r"_total$", "", name)  # a counter's family is named without the _total of its sample
        for name in re.findall(r"^\| `(promptopt_[a-z_]+)(?:\{[a-z]+\})?` \|", INSTALL.read_text(), re.M)
    }
    assert listed == served
