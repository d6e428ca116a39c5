"""Which box does what: `wan22bot worker`'s refusals, the front's preflight, a front that renders
too, and a SQLite box with its worker turned off."""

from __future__ import annotations

import time

import pytest

from tests.redis_server import RedisServer
from wan22bot.cli import main
from wan22bot.config import load_config
from wan22bot.credentials import HTTP_TOKEN_CREDENTIAL, adopt_http_token_credential
from wan22bot.errors import ConfigError
from wan22bot.worker_role import NOT_REDIS

from .conftest import TOKEN, TOKEN_ENV, Front, config_text, queue_section, wait_until

REDIS_URL = "redis://127.0.0.1:1/0"  # never reached: every refusal here comes before any connection


def write(tmp_path, text: str):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return path


def worker_cfg(tmp_path, *, queue: str | None = None, http: str = "", worker: str = 'name = "w"') -> str:
    text = config_text(8622, "state", queue if queue is not None else queue_section(REDIS_URL), worker=worker)
    return text.replace("[http]\n", f"[http]\n{http}\n") if http else text


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_worker_needs_the_redis_backend(tmp_path, capsys, token):
    code, err = run(capsys, "worker", "-c", str(write(tmp_path, worker_cfg(tmp_path, queue=""))))
    assert code == 2
    assert NOT_REDIS in err and 'backend = "redis"' in err and "[gpus] devices" in err
    assert not (tmp_path / "state").exists()  # refused before touching anything


def test_worker_needs_the_front_token(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    code, err = run(capsys, "worker", "-c", str(write(tmp_path, worker_cfg(tmp_path))))
    assert code == 2
    assert TOKEN_ENV in err and "http-token" in err and "http://127.0.0.1:8622" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_worker_needs_front_url_when_the_front_listens_everywhere(tmp_path, capsys, token, host):
    code, err = run(capsys, "worker", "-c", str(write(tmp_path, worker_cfg(tmp_path, http=f'host = "{host}"'))))
    assert code == 2
    assert "front_url" in err and repr(host) in err


def test_front_url_wins_over_a_wildcard_http_host(tmp_path, token):
    from wan22bot.worker_role import check_worker_config

    queue = queue_section(REDIS_URL) + 'front_url = "http://10.1.2.3:9000/"\n'
    cfg = load_config(write(tmp_path, worker_cfg(tmp_path, queue=queue, http='host = "0.0.0.0"')))
    assert check_worker_config(cfg) == "http://10.1.2.3:9000"


def test_worker_renders_on_one_device(tmp_path, capsys, token):
    text = worker_cfg(tmp_path) + '[gpus]\ndevices = ["cpu", "cpu"]\n'
    code, err = run(capsys, "worker", "-c", str(write(tmp_path, text)))
    assert code == 2
    assert "one `wan22bot worker` per GPU" in err and "wan22bot-worker@" in err


def test_a_redis_front_needs_the_token_its_workers_send(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    code, err = run(capsys, "run", "-c", str(write(tmp_path, worker_cfg(tmp_path, worker="enabled = false"))))
    assert code == 2
    assert 'backend = "redis"' in err and TOKEN_ENV in err and "give the workers the same token" in err


def test_a_redis_front_needs_http(tmp_path, capsys, token):
    text = worker_cfg(tmp_path, worker="enabled = false").replace("[http]\n", "[http]\nenabled = false\n")
    code, err = run(capsys, "run", "-c", str(write(tmp_path, text)))
    assert code == 2
    assert "[http] enabled = true" in err


def test_the_http_token_credential(tmp_path):
    cfg = load_config(write(tmp_path, worker_cfg(tmp_path)))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / HTTP_TOKEN_CREDENTIAL).write_text("from-the-credential\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert adopt_http_token_credential(cfg, env) == "credential"
    assert env[TOKEN_ENV] == "from-the-credential"
    # the variable, when set, wins
    env = {"CREDENTIALS_DIRECTORY": str(creds), TOKEN_ENV: "from-the-env"}
    assert adopt_http_token_credential(cfg, env) == "environment" and env[TOKEN_ENV] == "from-the-env"
    # neither: nothing, and the checks that need a token say so
    assert adopt_http_token_credential(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None
    (creds / HTTP_TOKEN_CREDENTIAL).write_text("two words\n")
    with pytest.raises(ConfigError, match="one word"):
        adopt_http_token_credential(cfg, {"CREDENTIALS_DIRECTORY": str(creds)})


@pytest.mark.slow
def test_a_sqlite_box_with_its_worker_off_queues_and_says_so(daemon_factory):
    d = daemon_factory(extra="[worker]\nenabled = false\n").start()
    assert "[worker] enabled = false with the SQLite queue: nothing renders on this box" in d.log.read_text()
    d.input.mkdir(exist_ok=True)
    from .conftest import make_photo

    make_photo(d.input / "waits.jpg", 1)
    job = d.wait_for(lambda: next((j for j in d.jobs() if j["photo"] == "waits.jpg"), None), 20, "the job")
    time.sleep(1.5)  # a worker would have started it by now
    assert d.get(f"/api/jobs/{job['id']}")[1]["state"] == "queued"
    assert d.get("/healthz")[0] == 200
    assert d.stop() == 0


@pytest.mark.slow
def test_a_redis_front_with_its_worker_on_renders_itself(tmp_path):
    redis = RedisServer(tmp_path)
    front = Front(tmp_path, redis.url, worker="enabled = true")
    try:
        front.start()
        front.input.mkdir(exist_ok=True)
        from .conftest import make_photo

        make_photo(front.input / "self.jpg", 2)
        job = wait_until(lambda: next((j for j in front.jobs() if j["photo"] == "self.jpg"
                                       and j["state"] in ("done", "failed")), None), 60, "the job to end", front)
        assert job["state"] == "done", job
        assert (front.output / f"{job['name']}.mp4").is_file() and (front.output / f"{job['name']}.json").is_file()
        log = front.text()
        assert f"job {job['id']}: done on " in log
        assert "takes jobs from the stream too ([worker] enabled = true)" in log
        status = front.get("/api/status")[1]
        assert len(status["workers"]) == 1 and status["model"]["loaded"] is True, status
        assert front.stop() == 0
    finally:
        if front.proc is not None and front.proc.poll() is None:
            front.proc.kill()
            front.proc.wait(10)
        redis.kill()
