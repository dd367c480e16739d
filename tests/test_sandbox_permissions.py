"""fim.sandbox.permissions: bwrap arguments of the permissions and unshare options (spec 3.3, 4)."""

from __future__ import annotations

import os
import posixpath
import subprocess
import sys
from collections.abc import Iterable, Mapping

import pytest

from fim.sandbox.permissions import (
    GPU_HOST_DIR,
    PERMISSIONS,
    UNSHARE,
    Host,
    dbus_socket_path,
    gpu_symlinks,
    network_isolated,
    permission_args,
    unshare_args,
)

FULL_ENV = {
    "HOME": "/home/u",
    "XDG_RUNTIME_DIR": "/run/user/1000",
    "WAYLAND_DISPLAY": "wayland-0",
    "DISPLAY": ":0",
    "XAUTHORITY": "/home/u/.Xauthority",
    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus,guid=abc",
}


class FakeFS:
    """A host file tree: files, directories and symlinks (absolute targets)."""

    def __init__(
        self,
        files: Iterable[str] = (),
        dirs: Iterable[str] = (),
        links: Mapping[str, str] | None = None,
    ) -> None:
        self.files = set(files)
        self.dirs = set(dirs)
        self.links = dict(links or {})
        for p in [*self.files, *self.dirs, *self.links]:  # parents exist
            while p != "/":
                p = posixpath.dirname(p)
                self.dirs.add(p)

    def realpath(self, path: str) -> str:
        for _ in range(40):
            if path not in self.links:
                return path
            path = self.links[path]
        return path

    def exists(self, path: str) -> bool:
        real = self.realpath(path)
        return real in self.files or real in self.dirs

    def isdir(self, path: str) -> bool:
        return self.realpath(path) in self.dirs

    def listdir(self, path: str) -> list[str]:
        if path not in self.dirs:
            return []
        entries = {*self.files, *self.dirs, *self.links} - {"/"}
        names = [posixpath.basename(e) for e in entries if posixpath.dirname(e) == path]
        return sorted(names, reverse=True)  # not in name order: the builders sort

    def host(self, environ: Mapping[str, str] | None = None, uid: int = 1000) -> Host:
        return Host(
            dict(FULL_ENV if environ is None else environ),
            exists=self.exists,
            listdir=self.listdir,
            uid=uid,
            isdir=self.isdir,
            realpath=self.realpath,
        )


def args_of(perm: str, host: Host | None = None, *, root_mode: bool = False) -> list[str]:
    args, msgs = permission_args({perm}, host or FakeFS().host(), root_mode=root_mode)
    assert msgs == []
    return args


def same(option: str, *paths: str) -> list[str]:
    return [x for p in paths for x in (option, p, p)]


def triples(args: list[str]) -> list[tuple[str, str, str]]:
    """Split an argument vector whose options all take two arguments."""
    assert len(args) % 3 == 0
    out = [(args[i], args[i + 1], args[i + 2]) for i in range(0, len(args), 3)]
    assert all(opt.startswith("--") for opt, _a, _b in out)
    return out


# -- the names ----------------------------------------------------------------------


def test_permission_names() -> None:
    assert len(PERMISSIONS) == len(set(PERMISSIONS)) == 15
    # spec 2.8: `fim-perms list` with every bit set
    listed = "audio dbus_system dbus_user dev gpu home input media network optical shm udev usb"
    listed += " wayland xorg"
    assert sorted(PERMISSIONS) == listed.split()
    # spec 3.3 emission order, gpu first
    assert PERMISSIONS == (
        "gpu", "home", "media", "audio", "wayland", "xorg", "dbus_user", "dbus_system",
        "udev", "input", "usb", "network", "shm", "optical", "dev",
    )  # fmt: skip
    assert UNSHARE == ("user", "ipc", "pid", "net", "uts", "cgroup")


def test_unknown_names_rejected() -> None:
    with pytest.raises(ValueError, match="all"):
        permission_args({"all"}, FakeFS().host(), root_mode=False)
    with pytest.raises(ValueError, match="bogus"):
        permission_args({"home", "bogus"}, FakeFS().host(), root_mode=False)
    with pytest.raises(ValueError, match="netns"):
        unshare_args({"netns"})


def test_no_permissions() -> None:
    assert permission_args((), FakeFS().host(), root_mode=False) == ([], [])
    assert permission_args(frozenset(), FakeFS().host({}), root_mode=True) == ([], [])


# -- each permission ----------------------------------------------------------------

FIXED = {
    "media": same("--bind-try", "/media", "/run/media", "/mnt"),
    "dbus_system": same("--bind-try", "/run/dbus/system_bus_socket"),
    "udev": same("--bind-try", "/run/udev"),
    "input": same("--dev-bind-try", "/dev/input", "/dev/uinput"),
    "usb": same("--dev-bind-try", "/dev/bus/usb", "/dev/usb"),
    "network": same(
        "--ro-bind-try", "/etc/host.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/resolv.conf"
    ),
    "shm": same("--dev-bind-try", "/dev/shm"),
    "dev": same("--dev-bind-try", "/dev"),
}


@pytest.mark.parametrize("perm", sorted(FIXED))
def test_fixed_permission(perm: str) -> None:
    assert FIXED[perm]
    assert args_of(perm) == FIXED[perm]
    # they do not depend on the environment or on what exists
    assert args_of(perm, FakeFS().host({})) == FIXED[perm]


def test_home() -> None:
    assert args_of("home") == same("--bind-try", "/home/u")


@pytest.mark.parametrize("environ", [{}, {"HOME": ""}])
def test_home_unset(environ: dict[str, str]) -> None:
    assert permission_args({"home"}, FakeFS().host(environ), root_mode=False) == (
        [],
        ["HOME environment variable is unset"],
    )


def test_home_skipped_in_root_mode() -> None:
    assert permission_args({"home"}, FakeFS().host(), root_mode=True) == ([], [])
    assert permission_args({"home"}, FakeFS().host({}), root_mode=True) == ([], [])
    everything, _ = permission_args(PERMISSIONS, FakeFS().host(), root_mode=False)
    as_root, _ = permission_args(PERMISSIONS, FakeFS().host(), root_mode=True)
    assert everything == [*as_root[:3], *same("--bind-try", "/home/u"), *as_root[3:]]


def test_audio() -> None:
    x = "/run/user/1000"
    assert args_of("audio") == [
        "--bind-try", f"{x}/pulse/native", f"{x}/pulse/native",
        "--setenv", "PULSE_SERVER", f"unix:{x}/pulse/native",
        "--bind-try", f"{x}/pipewire-0", f"{x}/pipewire-0",
        "--dev-bind-try", "/dev/dsp", "/dev/dsp",
        "--bind-try", "/dev/snd", "/dev/snd",
        "--bind-try", "/proc/asound", "/proc/asound",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("environ", "uid", "xdg"),
    [
        ({"XDG_RUNTIME_DIR": "/xdg"}, 1000, "/xdg"),
        ({}, 1234, "/run/user/1234"),
        ({"XDG_RUNTIME_DIR": ""}, 0, "/run/user/0"),
    ],
)
def test_xdg_runtime_dir(environ: dict[str, str], uid: int, xdg: str) -> None:
    host = FakeFS().host(environ, uid=uid)
    assert host.xdg_runtime_dir == xdg
    assert args_of("audio", host)[1] == f"{xdg}/pulse/native"


def test_xdg_runtime_dir_default_uid() -> None:
    assert Host({}).xdg_runtime_dir == f"/run/user/{os.getuid()}"


def test_wayland() -> None:
    sock = "/run/user/1000/wayland-0"
    assert args_of("wayland") == [
        *same("--bind-try", sock),
        *["--setenv", "WAYLAND_DISPLAY", "wayland-0"],
    ]


def test_wayland_absolute_display() -> None:
    host = FakeFS().host({"WAYLAND_DISPLAY": "/tmp/wl/w-1"})
    assert args_of("wayland", host)[:3] == same("--bind-try", "/tmp/wl/w-1")


def test_wayland_unset() -> None:
    env = {k: v for k, v in FULL_ENV.items() if k != "WAYLAND_DISPLAY"}
    host = FakeFS().host(env)
    assert permission_args({"wayland"}, host, root_mode=False) == (
        [],
        ["WAYLAND_DISPLAY is undefined"],
    )


def test_xorg() -> None:
    assert args_of("xorg") == [
        *same("--ro-bind-try", "/home/u/.Xauthority"),
        *["--setenv", "XAUTHORITY", "/home/u/.Xauthority"],
        *["--setenv", "DISPLAY", ":0"],
        *same("--ro-bind-try", "/tmp/.X11-unix"),  # fim: private /tmp
    ]


@pytest.mark.parametrize(
    ("missing", "msgs"),
    [
        (("DISPLAY",), ["DISPLAY is undefined"]),
        (("XAUTHORITY",), ["XAUTHORITY is undefined"]),
        (("DISPLAY", "XAUTHORITY"), ["DISPLAY is undefined", "XAUTHORITY is undefined"]),
    ],
)
def test_xorg_missing(missing: tuple[str, ...], msgs: list[str]) -> None:
    assert missing and msgs
    env = {k: v for k, v in FULL_ENV.items() if k not in missing}
    assert permission_args({"xorg"}, FakeFS().host(env), root_mode=False) == ([], msgs)


@pytest.mark.parametrize(
    ("address", "path"),
    [
        ("unix:path=/run/user/1000/bus,guid=abc", "/run/user/1000/bus"),
        ("unix:path=/run/user/1000/bus", "/run/user/1000/bus"),
        ("unix:guid=abc,path=/tmp/b,x=y", "/tmp/b"),
        ("unix:abstract=/tmp/dbus-XyZ,guid=1", "/tmp/dbus-XyZ"),
        ("tcp:host=localhost,port=1", None),
    ],
)
def test_dbus_user(address: str, path: str | None) -> None:
    assert address
    assert dbus_socket_path(address) == path
    expected = ["--setenv", "DBUS_SESSION_BUS_ADDRESS", address]
    if path is not None:
        expected += same("--bind-try", path)
    host = FakeFS().host({"DBUS_SESSION_BUS_ADDRESS": address})
    assert args_of("dbus_user", host) == expected


def test_dbus_user_unset() -> None:
    assert permission_args({"dbus_user"}, FakeFS().host({}), root_mode=False) == (
        [],
        ["DBUS_SESSION_BUS_ADDRESS is undefined"],
    )


@pytest.mark.parametrize(
    ("devices", "bound"),
    [
        ([], []),
        (["sr0"], ["sr0"]),
        (["sg0"], ["sg0"]),
        (["sr0", "sg0", "sr1", "sg2", "sr2"], ["sr0", "sg0", "sr1", "sr2", "sg2"]),
        (["sr0", "sr2"], ["sr0"]),  # stops at the first i with neither
        (["sr1", "sg1"], []),
    ],
)
def test_optical(devices: list[str], bound: list[str]) -> None:
    fs = FakeFS(files=[f"/dev/{d}" for d in devices])
    assert args_of("optical", fs.host()) == same("--dev-bind-try", *[f"/dev/{d}" for d in bound])


def test_optical_limit() -> None:
    fs = FakeFS(files=[f"/dev/sr{i}" for i in range(300)])
    args = args_of("optical", fs.host())
    assert len(args) == 3 * 256
    assert args[-1] == "/dev/sr255"


# -- gpu ----------------------------------------------------------------------------

NV = "/usr/lib/x86_64-linux-gnu"
I386 = "/usr/lib/i386-linux-gnu"
GPU_FS = FakeFS(
    files=[
        "/dev/nvidia0",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/null",
        f"{NV}/libnvidia-ml.so.550.54",
        f"{NV}/libcuda.so.550.54",
        f"{NV}/libnvcuvid.so.550.54",
        f"{NV}/libnvoptix.so.1",
        f"{NV}/libGL.so.1",
        f"{NV}/libnvidia-egl-wayland.so.1",  # egl-wayland: skipped
        f"{NV}/libicudata.so.72",  # icudata: skipped (and no needle)
        f"{NV}/gstreamer-1.0/libgstnvcodec-cuda.so",  # not directly inside
        f"{NV}/libgstcuda-1.0.so",  # gst: skipped
        f"{NV}/nvidia/xorg/nvidia_drv.so",  # inside a subdirectory: not recursive
        "/usr/lib/libcuda.so.1",
        f"{I386}/libnvidia-glcore.so.550",
        "/usr/lib32/libcuda.so",
        "/usr/lib32/libnvcuvid.so",  # lib32: nvidia or cuda only
        "/usr/bin/nvidia-smi",
        "/usr/bin/cuda-gdb",  # bin: nvidia only
        "/usr/share/nvidia-x.conf",
        "/usr/share/libcuda-doc",  # share: nvidia only
        "/usr/share/vulkan/icd.d/nvidia_icd.json",
        "/usr/share/vulkan/icd.d/cuda_icd.json",
        "/usr/local/lib/libnvidia-foo.so",  # not a listed directory
    ],
    dirs=["/dev/dri", "/dev/nvidia-caps", "/usr/share/nvidia", f"{NV}/nvidia", "/usr/lib/cuda"],
    links={
        f"{NV}/libnvidia-ml.so.1": f"{NV}/libnvidia-ml.so.550.54",
        f"{NV}/libcuda.so.1": f"{NV}/libcuda.so.550.54",
        f"{NV}/libcuda.so": f"{NV}/libcuda.so.1",  # chain
        f"{NV}/libnvidia-dangling.so": f"{NV}/libnvidia-gone.so",  # dangling: skipped
        "/usr/lib/nvidia-dir-link": "/usr/lib/cuda",  # a link to a directory: skipped
    },
)

GPU_FILES = [  # (path, real path), in directory order, names sorted
    ("/usr/lib/libcuda.so.1", "/usr/lib/libcuda.so.1"),
    (f"{NV}/libcuda.so", f"{NV}/libcuda.so.550.54"),
    (f"{NV}/libcuda.so.1", f"{NV}/libcuda.so.550.54"),
    (f"{NV}/libcuda.so.550.54", f"{NV}/libcuda.so.550.54"),
    (f"{NV}/libnvcuvid.so.550.54", f"{NV}/libnvcuvid.so.550.54"),
    (f"{NV}/libnvidia-ml.so.1", f"{NV}/libnvidia-ml.so.550.54"),
    (f"{NV}/libnvidia-ml.so.550.54", f"{NV}/libnvidia-ml.so.550.54"),
    (f"{NV}/libnvoptix.so.1", f"{NV}/libnvoptix.so.1"),
    (f"{I386}/libnvidia-glcore.so.550", f"{I386}/libnvidia-glcore.so.550"),
    ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi"),
    ("/usr/share/nvidia-x.conf", "/usr/share/nvidia-x.conf"),
    ("/usr/share/vulkan/icd.d/nvidia_icd.json", "/usr/share/vulkan/icd.d/nvidia_icd.json"),
    ("/usr/lib32/libcuda.so", "/usr/lib32/libcuda.so"),
]


def test_gpu_symlinks() -> None:
    assert gpu_symlinks(GPU_FS.host()) == [(p, GPU_HOST_DIR + r) for p, r in GPU_FILES]


def test_gpu_symlinks_none() -> None:
    assert gpu_symlinks(FakeFS().host()) == []
    assert gpu_symlinks(FakeFS(files=["/usr/lib/libGL.so.1"]).host()) == []


@pytest.mark.parametrize(
    ("path", "selected"),
    [
        ("/usr/lib/libnvidia-x.so", True),
        ("/usr/lib/libcudart.so", True),
        ("/usr/lib/libnvcuvid.so", True),
        ("/usr/lib/libnvoptix.so", True),
        ("/usr/lib/x86_64-linux-gnu/libcudart.so", True),
        ("/usr/lib/i386-linux-gnu/libnvoptix.so", True),
        ("/usr/lib32/libnvidia-x.so", True),
        ("/usr/lib32/libcudart.so", True),
        ("/usr/lib32/libnvoptix.so", False),
        ("/usr/bin/nvidia-settings", True),
        ("/usr/bin/nvcuvid-tool", False),
        ("/usr/share/vulkan/icd.d/nvidia_layers.json", True),
        ("/usr/share/vulkan/icd.d/libcuda.json", False),
        ("/usr/lib/libgstnvidia.so", False),
        ("/usr/lib/libnvidia-icudata.so", False),
        ("/usr/lib/libnvidia-egl-wayland.so.1", False),
        ("/usr/lib/libGLX.so", False),
        ("/usr/lib/gbm/nvidia-drm_gbm.so", False),
        ("/usr/lib64/libnvidia-x.so", False),
        ("/usr/share/vulkan/implicit_layer.d/nvidia_layers.json", False),
    ],
)
def test_gpu_symlink_rules(path: str, selected: bool) -> None:
    assert path
    found = gpu_symlinks(FakeFS(files=[path]).host())
    assert found == ([(path, GPU_HOST_DIR + path)] if selected else [])


def test_gpu_args() -> None:
    reals = list(dict.fromkeys(r for _p, r in GPU_FILES))
    assert len(reals) < len(GPU_FILES)  # links to one file bind it once
    assert args_of("gpu", GPU_FS.host()) == [
        *same("--dev-bind-try", "/dev/dri"),
        *same("--dev-bind-try", "/dev/nvidia-caps", "/dev/nvidia-uvm", "/dev/nvidia0"),
        *same("--dev-bind-try", "/dev/nvidiactl"),
        *[x for r in reals for x in ("--ro-bind-try", r, GPU_HOST_DIR + r)],
    ]


def test_gpu_links_resolve_to_bound_files() -> None:
    """Every link target inside is the destination of one of the gpu binds."""
    host = GPU_FS.host()
    dests = {b for o, _a, b in triples(args_of("gpu", host)) if o == "--ro-bind-try"}
    links = gpu_symlinks(host)
    assert links
    assert {target for _p, target in links} == dests
    assert all(path != target for path, target in links)  # no link points at itself


def test_gpu_without_devices() -> None:
    assert args_of("gpu") == same("--dev-bind-try", "/dev/dri")


# -- order and the full set ---------------------------------------------------------


def full_host() -> Host:
    return FakeFS(files=[*GPU_FS.files, "/dev/sr0"], dirs=GPU_FS.dirs, links=GPU_FS.links).host()


def test_full_set_order() -> None:
    host = full_host()
    args, msgs = permission_args(set(PERMISSIONS), host, root_mode=False)
    assert msgs == []
    assert args == [x for p in PERMISSIONS for x in args_of(p, host)]
    for p in PERMISSIONS:
        assert args_of(p, host), p  # every permission adds something on this host
    # dev is last, so it supersedes the earlier /dev binds
    assert args[-3:] == same("--dev-bind-try", "/dev")
    assert args[:3] == same("--dev-bind-try", "/dev/dri")


@pytest.mark.parametrize("order", [PERMISSIONS, tuple(reversed(PERMISSIONS))])
def test_order_independent_of_input(order: tuple[str, ...]) -> None:
    assert order
    host = full_host()
    assert permission_args(list(order), host, root_mode=False) == permission_args(
        sorted(order), host, root_mode=False
    )


@pytest.mark.parametrize(
    "subset",
    [("dev", "home"), ("network", "media", "gpu"), ("optical", "shm", "usb", "input")],
)
def test_subset_order(subset: tuple[str, ...]) -> None:
    assert subset
    host = full_host()
    args, _ = permission_args(subset, host, root_mode=False)
    assert args == [x for p in PERMISSIONS if p in subset for x in args_of(p, host)]


def test_full_set_empty_environment() -> None:
    args, msgs = permission_args(PERMISSIONS, FakeFS().host({}, uid=7), root_mode=False)
    assert msgs == [
        "HOME environment variable is unset",
        "WAYLAND_DISPLAY is undefined",
        "DISPLAY is undefined",
        "XAUTHORITY is undefined",
        "DBUS_SESSION_BUS_ADDRESS is undefined",
    ]
    assert "/run/user/7/pulse/native" in args
    setenv = [name for option, name, _value in triples(args) if option == "--setenv"]
    assert setenv == ["PULSE_SERVER"]


# -- unshare and the network namespace ----------------------------------------------

FLAGS = [
    "--unshare-user-try",
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
]


def test_unshare_all_in_table_order() -> None:
    assert unshare_args(UNSHARE) == FLAGS
    assert unshare_args(tuple(reversed(UNSHARE))) == FLAGS
    assert unshare_args(set(UNSHARE), network_isolated=True) == FLAGS  # net once


@pytest.mark.parametrize("name", UNSHARE)
def test_unshare_each(name: str) -> None:
    assert unshare_args([name]) == [FLAGS[UNSHARE.index(name)]]


def test_unshare_none() -> None:
    assert unshare_args(()) == []
    assert unshare_args((), network_isolated=True) == ["--unshare-net"]


def test_unshare_net_placed_in_table_order() -> None:
    got = unshare_args({"cgroup", "user", "uts"}, network_isolated=True)
    assert got == ["--unshare-user-try", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    assert unshare_args({"net", "pid"}, network_isolated=True) == [
        "--unshare-pid",
        "--unshare-net",
    ]


@pytest.mark.parametrize(
    ("perms", "unshare", "isolated"),
    [
        ((), (), True),
        (("home", "dev"), (), True),
        (("network",), (), False),
        (PERMISSIONS, (), False),
        (("network",), ("pid",), False),
        (("network",), ("net",), True),  # fim-unshare net wins (spec 4)
        ((), ("net",), True),
    ],
)
def test_network_isolated(perms: tuple[str, ...], unshare: tuple[str, ...], isolated: bool) -> None:
    assert network_isolated(perms, unshare) is isolated
    flags = unshare_args(unshare, network_isolated=network_isolated(perms, unshare))
    assert flags.count("--unshare-net") == (1 if isolated else 0)


# -- the real host ------------------------------------------------------------------

BIND_OPTIONS = {"--bind", "--ro-bind", "--dev-bind"}


def test_real_host() -> None:
    host = Host(os.environ)
    args, msgs = permission_args(PERMISSIONS, host, root_mode=False)
    assert all(isinstance(m, str) and m for m in msgs)
    parsed = triples(args)
    assert parsed
    missing = 0
    for option, src, dest in parsed:
        assert option == "--setenv" or option.removesuffix("-try") in BIND_OPTIONS, option
        assert dest.startswith("/") or option == "--setenv"
        if option != "--setenv" and not os.path.exists(src):
            missing += 1
            assert option.endswith("-try"), (option, src)
    assert missing  # e.g. /dev/uinput, /run/media or a sound socket on a build machine
    for path, target in gpu_symlinks(host):
        assert os.path.exists(path) and target.startswith(GPU_HOST_DIR + "/")


def test_imports_only_stdlib() -> None:
    """sandbox/ never imports cli or fimfs (ARCHITECTURE.md)."""
    code = (
        "import sys, sandbox.permissions; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cli', 'fimfs')))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
