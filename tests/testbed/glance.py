"""A real OpenStack Glance API for the publish tests: glance from PyPI, in its own venv,
under uWSGI, with no keystone, sqlite and a file store, on 127.0.0.1.

The venv is built by scripts/setup.sh (`make setup`), outside our .venv: glance pulls
dozens of oslo libraries and eventlet that must not leak into the agent's environment.
openstacksdk reaches it through a clouds.yaml with `auth_type: none` (write_clouds_yaml).

No keystone, but not glance's noauth either: noauth's context has no project, and the
interoperable import (glance-direct) cannot record its task without an owner. Glance runs
its keystone pipeline without the token check (`authtoken`): uWSGI hands every request the
identity keystonemiddleware leaves after checking a token (X-Identity-Status: Confirmed, a
project, a user, the admin role), so Glance's own context middleware and policies see a
project-scoped admin, as on a cloud.

    python -m tests.testbed.glance           # start one, print its clouds.yaml, wait for ^C
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

from agent.runcmd import run
from tests.testbed.procs import free_port, start_daemon, stop_process

VENV = os.environ.get("COLDCLONE_GLANCE_VENV", "/var/tmp/coldclone-glance-venv")
# What scripts/setup.sh installed (it writes this file last, so it marks a whole build).
STAMP = os.path.join(VENV, ".coldclone-stamp")


def available() -> str | None:
    """None when the Glance venv is usable, else why not (the test's skip reason)."""
    for tool in ("uwsgi", "glance-manage"):
        if not os.access(os.path.join(VENV, "bin", tool), os.X_OK):
            return f"no {tool} in {VENV}: run `make setup` (it builds the Glance venv)"
    if not os.path.exists(STAMP):
        return f"{VENV} is half built (no {STAMP}): run `make setup` again"
    return None


def _site_packages() -> str:
    lib = os.path.join(VENV, "lib")
    py = next(n for n in sorted(os.listdir(lib)) if n.startswith("python"))
    return os.path.join(lib, py, "site-packages")


CONF = """\
[DEFAULT]
{import_methods}
bind_host = 127.0.0.1
bind_port = {port}
enabled_backends = fs:file
# glance refuses to start its import tasks without it (it is its own URL)
worker_self_reference_url = http://127.0.0.1:{port}
log_file = {work}/glance-api.log
{extra_default}
[database]
connection = sqlite:///{work}/glance.sqlite

[paste_deploy]
# the keystone pipeline without authtoken (see the module's docstring); added to the paste ini
flavor = trusted

[image_format]
{disk_formats}

[oslo_policy]
# The 2023+ policy defaults want a keystone scope on every request; with noauth there is none.
enforce_new_defaults = False
enforce_scope = False

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {work}/images

[os_glance_staging_store]
filesystem_store_datadir = {work}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {work}/tasks
"""


# The identity keystonemiddleware's auth_token puts in the request after checking a token.
PROJECT_ID = "9d2a4c5e0b1f4e3a8c7d6b5a49382716"
USER_ID = "0c0ffee0c0ffee0c0ffee0c0ffee0042"
IDENTITY = {"HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_PROJECT_ID": PROJECT_ID,
            "HTTP_X_TENANT_ID": PROJECT_ID, "HTTP_X_USER_ID": USER_ID,
            "HTTP_X_ROLES": "admin,member,reader"}
# flavor `trusted`: glance loads the app glance-api-trusted, whose api pipeline is `trusted`
COMPOSITE = ("[composite:glance-api-trusted]\npaste.composite_factory = glance.api:root_app_factory\n"
             "/: api\n/healthcheck: healthcheck\n\n")
PIPELINE = "trusted = cors http_proxy_to_wsgi versionnegotiation osprofiler context rootapp\n"


class Glance:
    """One glance-api; `image_size_cap` (bytes) makes it refuse larger uploads; `import_methods`
    (None: Glance's default, glance-direct, web-download, copy-image) and `disk_formats` (None:
    Glance's default list) are what the cloud offers."""

    def __init__(self, workdir: str | None = None, image_size_cap: int | None = None,
                 import_methods: list[str] | None = None, disk_formats: list[str] | None = None):
        self.work = workdir or tempfile.mkdtemp(prefix="coldclone-glance-")
        self.image_size_cap = image_size_cap
        self.import_methods = import_methods
        self.disk_formats = disk_formats
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf_dir(self) -> str:
        return os.path.join(self.work, "conf")

    @property
    def images_dir(self) -> str:
        return os.path.join(self.work, "images")

    def start(self) -> "Glance":
        why = available()
        if why:
            raise RuntimeError(why)
        self.port = free_port()
        for d in ("conf", "images", "staging", "tasks"):
            os.makedirs(os.path.join(self.work, d), exist_ok=True)
        extra = f"image_size_cap = {self.image_size_cap}" if self.image_size_cap else ""
        methods = ("" if self.import_methods is None else
                   f"enabled_import_methods = [{', '.join(repr(m) for m in self.import_methods)}]")
        formats = "" if self.disk_formats is None else f"disk_formats = {','.join(self.disk_formats)}"
        with open(os.path.join(self.conf_dir, "glance-api.conf"), "w") as f:
            f.write(CONF.format(port=self.port, work=self.work, extra_default=extra,
                                import_methods=methods, disk_formats=formats))
        with open(os.path.join(VENV, "etc", "glance", "glance-api-paste.ini")) as f:
            paste = f.read()
        # the keystone pipeline without authtoken, beside glance's own pipelines
        paste = COMPOSITE + paste.replace("[composite:api]\n", "[composite:api]\n" + PIPELINE, 1)
        with open(os.path.join(self.conf_dir, "glance-api-paste.ini"), "w") as f:
            f.write(paste)
        run([os.path.join(VENV, "bin", "glance-manage"), "--config-dir", self.conf_dir, "db_sync"],
            timeout=120, hint="glance-manage could not create the sqlite database")
        log = os.path.join(self.work, "uwsgi.log")
        env_argv = ["env", f"OS_GLANCE_CONFIG_DIR={self.conf_dir}"]
        self.proc = start_daemon(
            env_argv + [os.path.join(VENV, "bin", "uwsgi"),
                        "--http-socket", f"127.0.0.1:{self.port}",
                        "--wsgi-file", os.path.join(_site_packages(), "glance", "wsgi", "api.py"),
                        "--home", VENV, "--master", "--processes", "1", "--threads", "4",
                        "--need-app", "--die-on-term", "--lazy-apps",
                        # image data arrives as a chunked PUT: uWSGI must pass it through
                        "--http-chunked-input", "--http-raw-body", "--buffer-size", "65535",
                        # uWSGI's --http-socket closes after each answer; without saying so, a
                        # client reusing the connection for a POST sees "connection reset"
                        "--add-header", "Connection: close",
                        # what keystonemiddleware leaves in a request it let through
                        *[a for k, v in IDENTITY.items() for a in ("--route-run", f"addvar:{k}={v}")]],
            "glance-api (uwsgi)", ("127.0.0.1", self.port), log, output=log,
            ready=self._answers, timeout=60)
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v2/images", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def write_clouds_yaml(self, path: str, cloud: str = "coldclone-test") -> str:
        """A clouds.yaml naming this Glance as `cloud` (OS_CLIENT_CONFIG_FILE=path)."""
        with open(path, "w") as f:
            f.write(f"clouds:\n  {cloud}:\n    auth_type: none\n    auth:\n"
                    f"      endpoint: {self.url}\n"
                    f"    image_endpoint_override: {self.url}\n"
                    f"    region_name: RegionOne\n")
        return path

    def image_files(self) -> list[str]:
        return sorted(os.listdir(self.images_dir)) if os.path.isdir(self.images_dir) else []

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)


if __name__ == "__main__":
    g = Glance().start()
    print(open(g.write_clouds_yaml(os.path.join(g.work, "clouds.yaml"))).read())
    print(f"glance-api on {g.url} (work dir {g.work}); Ctrl-C stops it", file=sys.stderr)
    try:
        g.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        g.cleanup()
