import json
import re

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
        ('device_id = "pi-1"', "missing required key '(director_public_keys|data_dir)'"),
        (f'device_id = "a/b"\ndata_dir = "/x"\ndirector_public_keys = ["{KEY}"]', "Invalid device_id"),
        (
            f'device_id = "pi"\ndata_dir = "/x"\ndirector_public_keys = ["{KEY}"]\n[broker]\nport = "x"',
            r"\[broker\]: 'port' must be int",
        ),
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


def _root(tmp_path):
    p = tmp_path / "root.json"
    p.write_text(json.dumps({"signed": {"_type": "root"}, "signatures": []}))
    return p


def test_image_repository_health_and_download_keys(tmp_path):
    root = _root(tmp_path)
    p = write(
        tmp_path,
        f'device_id = "pi-1"\ndata_dir = "{tmp_path}"\ndirector_public_keys = ["{KEY}"]\n'
        f'[image_repository]\nurl = "https://c.example/v1/tuf/metadata/"\nroot = "{root}"\n'
        "[download]\nmin_speed = 2048\ngrace = 1\n[health]\nlive_inferences = 5\nlive_window = 2.5\n",
    )
    cfg = load_config(p)
    assert cfg.image_repo is not None and cfg.image_repo.root == root
    assert cfg.download.min_speed == 2048.0 and cfg.download.attempts == 3
    assert cfg.health.live_inferences == 5 and cfg.health.live_window == 2.5


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ('[image_repository]\nurl = "ftp://x"\nroot = "{root}"', r"\[image_repository\]: 'url' must be str matching"),
        ('[image_repository]\nurl = "http://x/"\nroot = "/nonexistent/root.json"', "cannot read root metadata"),
        ('[image_repository]\nurl = "http://x/"\nroot = "{bad}"', "must be TUF root metadata"),
        ("[health]\nlatency_runs = 0", r"\[health\]: 'latency_runs' must be int >= 1"),
        ('[download]\nmin_speed = "fast"', r"\[download\]: 'min_speed' must be a number"),
    ],
)
def test_bad_new_keys_name_the_problem(tmp_path, section, match):
    root = _root(tmp_path)
    bad = tmp_path / "targets.json"
    bad.write_text('{"signed": {"_type": "targets"}}')
    text = f'device_id = "pi-1"\ndata_dir = "{tmp_path}"\ndirector_public_keys = ["{KEY}"]\n' + section.format(root=root, bad=bad)
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ("[broker]\nprot = 1884", r"\[broker\]: unknown key \(a typo\?\) 'prot'"),
        ("[broker]\nport = 70000", r"\[broker\]: 'port' must be int <= 65535"),
        ("[broker]\nport = 0", r"\[broker\]: 'port' must be int >= 1"),
        ('log_level = "verbose"', r"'log_level' must be one of debug, info"),
        ("http_port = 99999", r"'http_port' must be int <= 65535"),
        ("[telemetry]\nwindow = 30", r"\[telemetry\]: unknown key \(a typo\?\) 'window'"),
        ("colour = 1", r"unknown key \(a typo\?\) 'colour'"),
        ("[download]\nretry_base_s = 10\nretry_max_s = 5", r"\[download\]: 'retry_max_s' \(5.0\) is below"),
        ("[broker]\nreconnect_min = 10\nreconnect_max = 1", r"\[broker\]: 'reconnect_max'"),
    ],
)
def test_typos_and_out_of_range_values_are_refused_by_check_config(tmp_path, capsys, section, match):
    """A config that passes --check-config must start: what would fail later is refused now, naming the key."""
    p = write(tmp_path, f'device_id = "pi-1"\ndata_dir = "{tmp_path}"\ndirector_public_keys = ["{KEY}"]\n' + section + "\n")
    assert main(["--config", str(p), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
