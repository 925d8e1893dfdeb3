import pytest

from agent.cli import main
from agent.config import ConfigError, load_config

pytestmark = pytest.mark.unit
KEY = "11" * 32


def write(tmp_path, text):
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_valid_config(tmp_path):
    p = write(tmp_path, f'device_id = "pi-1"\ndata_dir = "{tmp_path}"\ndirector_public_keys = ["{KEY}"]\n[broker]\nport = 1999\n')
    cfg = load_config(p)
    assert cfg.broker.port == 1999 and cfg.socket_path == tmp_path / "agent.sock"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('device_id = "pi-1"', "missing required key 'director_public_keys'"),
        (f'device_id = "a/b"\ndata_dir = "/x"\ndirector_public_keys = ["{KEY}"]', "Invalid device_id"),
        (f'device_id = "pi"\ndata_dir = "/x"\ndirector_public_keys = ["{KEY}"]\n[broker]\nport = "x"', "'port' must be int"),
        ('device_id = "pi"\ndata_dir = "/x"\ndirector_public_keys = []', "director_public_keys"),
        ("device_id = ", "invalid TOML"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_check_config_cli(tmp_path, capsys):
    good = write(tmp_path, f'device_id = "pi-1"\ndata_dir = "{tmp_path}"\ndirector_public_keys = ["{KEY}"]\n')
    assert main(["--config", str(good), "--check-config"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["--config", str(tmp_path / "missing.toml"), "--check-config"]) == 2
    assert "cannot read config" in capsys.readouterr().err
