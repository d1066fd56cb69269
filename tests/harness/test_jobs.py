"""The harness's reading of what users see."""

from promptopt_harness.jobs import table_rows


def test_kubectl_tables_are_read_by_column_so_an_empty_cell_stays_empty():
    listing = (
        "NAME    PHASE     OPTIMIZER   PROGRESS%   INITIAL   BEST    DURATION   AGE\n"
        "queued  Queued    GEPA                                                 3s\n"
        "done    Succeeded GEPA        96          0.583     1.000   41s        55s\n"
    )
    queued, done = table_rows(listing)
    assert queued == {
        "NAME": "queued",
        "PHASE": "Queued",
        "OPTIMIZER": "GEPA",
        "PROGRESS%": "",
        "INITIAL": "",
        "BEST": "",
        "DURATION": "",
        "AGE": "3s",
    }
    assert (done["BEST"], done["DURATION"], done["AGE"]) == ("1.000", "41s", "55s")
