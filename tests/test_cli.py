from paperclub.cli import main


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: paperclub" in capsys.readouterr().out
