"""[queue] backend = "redis" and [worker]: what the config file may say, and what it is refused."""

from __future__ import annotations

import pytest

from wan22bot.config import config_from_dict, load_config
from wan22bot.errors import ConfigError
from wan22bot.queue.redis_conn import client, keys, read_credentials, shown_url, worker_name


def refused(data: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    return str(exc.value)


def test_the_defaults_are_the_single_box_queue():
    cfg = config_from_dict({})
    assert cfg.queue.backend == "sqlite" and cfg.queue.url is None
    assert cfg.worker.enabled is True and cfg.worker.name is None
    assert (cfg.queue.heartbeat_seconds, cfg.queue.claim_timeout_seconds) == (5.0, 60.0)


def test_redis_needs_a_url():
    msg = refused({"queue": {"backend": "redis"}})
    assert "[queue]" in msg and 'url = "redis://host:port/db"' in msg


def test_a_password_in_the_url_is_refused_without_being_repeated():
    msg = refused({"queue": {"backend": "redis", "url": "redis://:hunter2-secret@10.0.0.5:6379/0"}})
    assert "password" in msg and "WAN22BOT_REDIS_PASSWORD" in msg and "redis-password" in msg
    assert "hunter2" not in msg


def test_the_url_must_be_redis_or_rediss():
    assert "redis://" in refused({"queue": {"backend": "redis", "url": "http://10.0.0.5:6379"}})
    cfg = config_from_dict({"queue": {"backend": "redis", "url": "rediss://cache.lan:6380/2"}})
    assert shown_url(cfg.queue.url) == "rediss://cache.lan:6380/2"


def test_the_claim_timeout_must_exceed_two_heartbeats():
    msg = refused({"queue": {"heartbeat_seconds": 10, "claim_timeout_seconds": 20}})
    assert "claim_timeout_seconds (20)" in msg and "heartbeat_seconds (10)" in msg and "above 20" in msg
    assert config_from_dict({"queue": {"heartbeat_seconds": 10, "claim_timeout_seconds": 20.5}})


def test_front_url_must_be_http_without_credentials():
    assert "front_url must be an http://" in refused({"queue": {"front_url": "10.0.0.5:8622"}})
    msg = refused({"queue": {"front_url": "https://admin:tok3n@front.lan"}})
    assert "token" in msg and "tok3n" not in msg
    assert config_from_dict({"queue": {"front_url": "https://front.lan:8443"}}).queue.front_url


def test_the_worker_name_and_prefix_are_key_safe():
    assert "[worker.name]" in refused({"worker": {"name": "gpu box"}})
    assert "[queue.redis_prefix]" in refused({"queue": {"redis_prefix": "a b"}})
    cfg = config_from_dict({"queue": {"redis_prefix": "studio2"}, "worker": {"name": "gpu-3"}})
    k = keys(cfg)
    assert (k.stream, k.group, k.events) == ("studio2:jobs", "studio2:workers", "studio2:events")
    assert (k.cancel("abc"), k.worker("gpu-3")) == ("studio2:cancel:abc", "studio2:worker:gpu-3")
    assert worker_name(cfg) == "gpu-3"


def test_the_default_worker_name_is_stable_and_differs_per_state_folder(tmp_path):
    a = config_from_dict({"paths": {"state": str(tmp_path / "a")}})
    b = config_from_dict({"paths": {"state": str(tmp_path / "b")}})
    assert worker_name(a) == worker_name(config_from_dict({"paths": {"state": str(tmp_path / "a")}}))
    assert worker_name(a) != worker_name(b)
    assert worker_name(a).rsplit("-", 1)[1].isalnum() and len(worker_name(a).rsplit("-", 1)[1]) == 6


def test_shared_folder_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "config.toml"
    f.write_text('[queue]\nbackend = "redis"\nurl = "redis://10.0.0.5/0"\nshared_folder = "photos"\n')
    assert load_config(f).queue.shared_folder == tmp_path / "etc" / "photos"


def test_credentials_come_from_the_environment_or_the_credentials_folder(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redis-password").write_text("from-file\n")
    (creds / "redis-ca").write_text("-----BEGIN CERTIFICATE-----\n")
    c = read_credentials({"CREDENTIALS_DIRECTORY": str(creds), "WAN22BOT_REDIS_USERNAME": "wan"})
    assert (c.username, c.password, c.ca_file) == ("wan", "from-file", creds / "redis-ca")
    c = read_credentials({"CREDENTIALS_DIRECTORY": str(creds), "WAN22BOT_REDIS_PASSWORD": "from-env"})
    assert c.password == "from-env" and "WAN22BOT_REDIS_PASSWORD" in c.password_from
    assert read_credentials({}).password is None
    with pytest.raises(ConfigError, match="WAN22BOT_REDIS_CA"):
        read_credentials({"WAN22BOT_REDIS_CA": str(tmp_path / "missing.pem")})


def test_a_ca_file_with_a_plain_redis_url_is_refused(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = config_from_dict({"queue": {"backend": "redis", "url": "redis://10.0.0.5:6379/0"}})
    with pytest.raises(ConfigError, match="rediss://"):
        client(cfg, {"WAN22BOT_REDIS_CA": str(ca)})
