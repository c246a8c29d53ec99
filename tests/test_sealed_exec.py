"""Sealed exec (issue 14 item 1, the CVE-2019-5736 class): the host interpreter is never the exe
of a process that runs the container's command, and nothing can write or chmod it through
/proc/self/exe. The trampoline's machine code is run for real (aarch64 through qemu-aarch64)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import platform
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagetool.runtime import sealed

REPO = Path(__file__).resolve().parent.parent


# --- the trampoline's contract, per architecture ------------------------------------------------
def _runner(arch: str) -> list[str]:
    """How to run a static ELF of `arch` here: natively, or through qemu-user; skip otherwise."""
    host = sealed.arch_for().name
    if arch == host:
        return []
    qemu = shutil.which(f"qemu-{arch}") or shutil.which(f"qemu-{arch}-static")
    if not qemu:
        pytest.skip(f"no qemu-{arch} to run the {arch} trampoline on this {host} host (apt-get install qemu-user)")
    return [qemu]


CONTRACT = [
    # (case, PATH and argv after it, expected exit status, stdout, stderr)
    ("argv0_and_env_reach_the_command", ["/bin/sh", "custom-argv0", "-c", 'printf "%s|%s" "$0" "$FOO"'], 0,
     "custom-argv0|from-env", ""),
    ("missing_command_exits_127", ["/nonexistent/cmd", "cmd"], 127, "",
     "imagetool: error: exec /nonexistent/cmd: no such file or directory\n"),
    ("script_without_shebang_exits_126", ["{noshebang}", "x"], 126, "",
     "imagetool: error: exec {noshebang}: exec format error\n"),
    ("non_executable_file_exits_126", ["/etc/passwd", "passwd"], 126, "",
     "imagetool: error: exec /etc/passwd: cannot execute\n"),
    ("directory_exits_126", ["/", "root"], 126, "", "imagetool: error: exec /: cannot execute\n"),
    ("missing_argv0_exits_126", ["/bin/true"], 126, "", ""),
    ("missing_path_exits_126", [], 126, "", ""),
]


@pytest.mark.parametrize("arch", sorted(sealed.ARCHES))
@pytest.mark.parametrize("case,args,status,out,err", CONTRACT, ids=[c[0] for c in CONTRACT])
def test_trampoline_contract(tmp_path, arch, case, args, status, out, err):
    runner = _runner(arch)
    elf = tmp_path / f"trampoline-{arch}"
    elf.write_bytes(sealed.trampoline_elf(sealed.arch_for(arch)))
    elf.chmod(0o555)
    noshebang = tmp_path / "noshebang"
    noshebang.write_text("echo this is no script\n")
    noshebang.chmod(0o755)
    args = [a.format(noshebang=noshebang) for a in args]
    r = subprocess.run([*runner, str(elf), *args], capture_output=True, text=True, timeout=60,
                       env={"FOO": "from-env", "PATH": "/usr/bin:/bin"})
    assert (r.returncode, r.stdout, r.stderr) == (status, out, err.format(noshebang=noshebang))


@pytest.mark.parametrize("machine", ["riscv64", "s390x", "i686"])
def test_unknown_architecture_is_a_clear_error(machine):
    with pytest.raises(sealed.UnsupportedArchitecture, match=f"no trampoline for architecture '{machine}'"):
        sealed.arch_for(machine)


def test_trampoline_is_a_small_static_elf_without_interpreter():
    for arch in sealed.ARCHES.values():
        elf = sealed.trampoline_elf(arch)
        assert elf[:4] == b"\x7fELF" and len(elf) < 512
        e_type, e_machine = struct.unpack_from("<HH", elf, 16)
        assert (e_type, e_machine) == (2, arch.e_machine)
        phoff, = struct.unpack_from("<Q", elf, 32)
        phnum, = struct.unpack_from("<H", elf, 56)
        types = [struct.unpack_from("<I", elf, phoff + 56 * i)[0] for i in range(phnum)]
        assert 3 not in types  # no PT_INTERP: nothing else is loaded


# --- the sealed memfd ----------------------------------------------------------------------------
def test_sealed_memfd_cannot_be_written_resized_or_unsealed():
    fd = sealed.sealed_trampoline()
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW, fcntl.F_SEAL_WRITE, fcntl.F_SEAL_SEAL):
            assert seals & seal
        assert os.pread(fd, 4096, 0) == sealed.trampoline_elf(sealed.arch_for())
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\xcc", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 1)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 1 << 20)
        with pytest.raises(PermissionError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0x0008)  # F_SEAL_SEAL forbids any further change
        # a second open through /proc (what /proc/<pid>/exe gives a container) cannot write either
        try:
            again = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        except PermissionError:
            again = None
        if again is not None:
            try:
                with pytest.raises(PermissionError):
                    os.write(again, b"\xcc")
            finally:
                os.close(again)
        assert os.get_inheritable(fd) is False
        if seals & sealed.F_SEAL_EXEC:  # Linux 6.3+: the exec bits are frozen as well
            for mode in (0o444, 0o554, 0o777 & ~0o100):
                with pytest.raises(PermissionError):
                    os.fchmod(fd, mode)
            assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o555
    finally:
        os.close(fd)


# --- exec_command in a forked child ------------------------------------------------------------
def _in_child(fn) -> tuple[int, str]:
    """Run fn() in a forked child with stdout+stderr into a pipe; (exit status, output)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.close(r)
            fn()
        except BaseException as e:  # noqa: BLE001 - report anything, never return into pytest
            os.write(2, f"child: {e!r}\n".encode())
        finally:
            os._exit(99)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


EXECS = {
    # the threat, shown to be real: the host interpreter's own exec of /proc/self/exe
    "os.execve": lambda path, argv, env: os.execve(path, argv, env),
    "sealed": sealed.exec_command,
}


@pytest.mark.parametrize("how", EXECS)
def test_proc_self_exe_as_command_never_runs_the_host_interpreter(how):
    status, out = _in_child(lambda: EXECS[how]("/proc/self/exe", ["python3", "--version"], {"PATH": "/bin"}))
    if how == "os.execve":
        assert "Python 3." in out and status == 0  # what an unsealed init would let a container do
    else:
        assert "Python" not in out
        assert status == 126  # the trampoline, re-entered as [python3, --version]: no ARG0


def test_command_runs_with_its_own_exe_argv0_and_env():
    script = 'printf "%s %s %s|" "$0" "$FOO" "${JUNK-unset}"; readlink /proc/$$/exe'
    status, out = _in_child(lambda: sealed.exec_command(
        "/bin/sh", ["my-argv0", "-c", script], ["FOO=bar baz", "PATH=/usr/bin:/bin", "JUNK"]))
    assert status == 0
    head, exe = out.strip().split("|")
    assert head == "my-argv0 bar baz unset"
    assert os.path.realpath(exe) == os.path.realpath("/bin/sh")


def test_trampoline_fd_made_earlier_is_used_and_closed():
    fd = sealed.sealed_trampoline()
    try:
        status, out = _in_child(lambda: sealed.exec_command(
            "/bin/sh", ["sh", "-c", "readlink /proc/$$/exe; ls -l /proc/$$/fd"], {"PATH": "/usr/bin:/bin"},
            trampoline_fd=fd))
    finally:
        os.close(fd)
    assert status == 0
    assert os.path.realpath(out.splitlines()[0]) == os.path.realpath("/bin/sh")
    assert "memfd" not in out  # the trampoline's fd did not survive into the command


def test_exec_command_raises_oserror_when_the_trampoline_cannot_be_executed():
    bad = os.memfd_create("not-executable", os.MFD_CLOEXEC)
    os.write(bad, b"#!/nonexistent\n")
    status, out = _in_child(lambda: sealed.exec_command("/bin/true", ["true"], {}, trampoline_fd=bad))
    os.close(bad)
    assert status == 99 and "child: FileNotFoundError" in out


# --- the attack against a COPY of the interpreter ------------------------------------------------
ATTACK = ("import os\n"
          "os.chmod('/proc/self/exe', 0o6777)\n"
          "os.setxattr('/proc/self/exe', 'user.pwned', b'1')\n")


def _pt_interp_elf(interp: bytes) -> bytes:
    """A minimal x86_64 ELF whose PT_INTERP is `interp` (the kernel loads that as its interpreter)."""
    ehdr, phdr = 64, 56
    interp_off = ehdr + 2 * phdr
    size = interp_off + len(interp) + 1
    head = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x400000 + interp_off, ehdr, 0, 0, ehdr, phdr, 2, 64, 0, 0)
    pt_interp = struct.pack("<IIQQQQQQ", 3, 4, interp_off, 0x400000 + interp_off, 0, len(interp) + 1,
                            len(interp) + 1, 1)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, size, size, 0x1000)
    return head + pt_interp + load + interp + b"\0"


def _copy_interpreter(d: Path) -> tuple[Path, dict]:
    """A copy of the running interpreter's binary and libpython in `d`; (binary, env to run it)."""
    d.mkdir()
    real = Path(os.path.realpath(sys.executable))
    copy = d / real.name
    shutil.copy2(real, copy)
    ldd = subprocess.run(["ldd", str(real)], capture_output=True, text=True).stdout
    for line in ldd.splitlines():
        if "libpython" in line and "=>" in line:
            lib = line.split("=>")[1].split("(")[0].strip()
            shutil.copy2(lib, d / Path(lib).name)
    env = {"PYTHONHOME": sys.base_prefix, "PYTHONPATH": os.pathsep.join([str(REPO), *_site_packages()]),
           "LD_LIBRARY_PATH": str(d), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return copy, env


@pytest.fixture
def interpreter_copy(tmp_path):
    return _copy_interpreter(tmp_path / "python-copy")


def _site_packages() -> list[str]:
    return [p for p in sys.path if p.endswith("site-packages")]


def _fingerprint(path: Path) -> tuple:
    st = os.stat(path)
    xattrs = sorted((n, os.getxattr(path, n)) for n in os.listxattr(path))
    return stat.S_IMODE(st.st_mode), st.st_uid, xattrs, hashlib.sha256(path.read_bytes()).hexdigest()


VECTORS = {
    # how the container's command reaches the interpreter: (path, argv) given the attack file
    "proc_self_exe_as_command": lambda f: ("/proc/self/exe", ["python3", str(f)]),
    "shebang_proc_self_exe": lambda f: (str(f.with_suffix(".sh")), [str(f.with_suffix(".sh"))]),
    "pt_interp_proc_self_exe": lambda f: (str(f.with_suffix(".elf")), ["elf", str(f)]),
}
# no control for PT_INTERP: the kernel does load a (dynamically linked) host python for it, but
# nothing runs ld.so for it then, so it crashes before the attack; a static interpreter would not
ATTACK_CASES = [(v, how) for v in VECTORS for how in EXECS
                if (v, how) != ("pt_interp_proc_self_exe", "os.execve")]


@pytest.mark.parametrize("vector,how", ATTACK_CASES)
def test_chmod_setxattr_attack_leaves_the_interpreter_unchanged(tmp_path, interpreter_copy, vector, how):
    copy, env = interpreter_copy
    attack = tmp_path / "attack.py"
    attack.write_text(ATTACK)
    script = attack.with_suffix(".sh")
    script.write_text("#!/proc/self/exe\n" + ATTACK)
    script.chmod(0o755)
    elf = attack.with_suffix(".elf")
    elf.write_bytes(_pt_interp_elf(b"/proc/self/exe"))
    elf.chmod(0o755)
    path, argv = VECTORS[vector](attack)
    before = _fingerprint(copy)
    driver = (f"import os, sys\nfrom imagetool.runtime import sealed\n"
              f"path, argv = {path!r}, {argv!r}\n"
              f"if sys.argv[1] == 'sealed':\n    sealed.exec_command(path, argv, os.environ)\n"
              f"os.execve(path, argv, os.environ)\n")
    r = subprocess.run([str(copy), "-c", driver, how], env=env, capture_output=True, text=True, timeout=60)
    after = _fingerprint(copy)
    if how == "os.execve":
        # the control: the attack is real when the interpreter execs the command itself
        assert after[0] == 0o6777 and ("user.pwned", b"1") in after[2], (r.returncode, r.stderr)
    else:
        assert after == before, (r.returncode, r.stderr)
        assert r.returncode in (126, 127)


# --- make_non_dumpable ---------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch both processes to nobody")
@pytest.mark.parametrize("non_dumpable", [False, True])
def test_non_dumpable_process_hides_its_exe_from_the_same_uid(non_dumpable):
    nobody = 65534
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody)
            os.setuid(nobody)
            if non_dumpable:
                sealed.make_non_dumpable()
            else:
                from imagetool.runtime import syscalls as sc
                sc.prctl(sealed.PR_SET_DUMPABLE, 1)  # a uid change cleared it; the container's case
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        status, out = _in_child(lambda: (os.setgroups([]), os.setgid(nobody), os.setuid(nobody),
                                         os.write(1, os.readlink(f"/proc/{pid}/exe").encode()), os._exit(0)))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    if non_dumpable:
        assert status == 99 and "PermissionError" in out
    else:
        assert status == 0 and os.path.basename(out).startswith("python")


# --- end to end: `imagetool run`, itself running from a copy of the interpreter -------------------
@pytest.fixture(scope="module")
def run_from_copy(tmp_path_factory):
    """(imagetool run …) from a copied interpreter, the copy, and the store (busybox inside)."""
    sys.path.insert(0, str(REPO / "tests"))
    from runhelpers import add_image, kernel_skip_reason

    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    from fixtures.images import busybox_image

    base = tmp_path_factory.mktemp("sealed-run")
    copy, env = _copy_interpreter(base / "python-copy")
    add_image(base / "store", busybox_image(), "busybox")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(copy), "-m", "imagetool", "--store", str(base / "store"), "run", "--rm", *args],
                              env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    return run, copy


def _host_interpreter_volumes() -> list[str]:
    """-v options giving the container what the host interpreter needs to run inside it (its
    prefix, the host's loader and libraries, read-only) and PYTHONHOME: with these only the sealed
    exec stands between the container and the host's binary."""
    out = []
    for d in (sys.base_prefix, "/lib", "/lib64", "/usr/lib"):
        if os.path.isdir(d):
            out += ["-v", f"{d}:{d}:ro"]
    return out + ["-e", f"PYTHONHOME={sys.base_prefix}"]


def test_run_proc_self_exe_prints_no_python_version(run_from_copy):
    run, _ = run_from_copy
    r = run(*_host_interpreter_volumes(), "busybox", "/proc/self/exe", "--version")
    assert "Python" not in r.stdout + r.stderr
    assert r.returncode == 126  # the trampoline re-entered as [/proc/self/exe, --version]


def test_run_attacks_on_proc_exe_leave_the_interpreter_unchanged(run_from_copy):
    """chmod/setxattr through /proc/self/exe with everything the host interpreter needs to run in
    the container (see _host_interpreter_volumes), and, from a shell, through /proc/1/exe."""
    run, copy = run_from_copy
    before = _fingerprint(copy)
    attack = ("import os; os.chmod('/proc/self/exe', 0o6777); "
              "os.setxattr('/proc/self/exe', 'user.pwned', b'1'); print('attack ran')")
    r1 = run(*_host_interpreter_volumes(), "--entrypoint", "/proc/self/exe", "busybox", "-c", attack)
    r2 = run("busybox", "sh", "-c", "readlink /proc/1/exe; chmod 6777 /proc/1/exe /proc/self/exe; "
                                    "setfattr -n user.pwned -v 1 /proc/1/exe 2>/dev/null; true")
    assert _fingerprint(copy) == before
    assert "attack ran" not in r1.stdout and r1.returncode in (126, 127), r1.stderr
    assert r2.returncode == 0 and r2.stdout.splitlines()[0] == "/bin/busybox", r2.stderr


def test_run_command_gets_its_argv_and_env_unchanged(run_from_copy):
    run, _ = run_from_copy
    r = run("-e", "FOO=a b  c", "-e", "EMPTY=", "busybox", "sh", "-c",
            'tr "\\0" "|" < /proc/$$/cmdline; echo; echo "[$FOO][$EMPTY]"; readlink /proc/$$/exe', "arg0")
    assert r.returncode == 0, r.stderr
    cmdline, env, exe = r.stdout.splitlines()
    assert cmdline.split("|")[:2] == ["sh", "-c"] and cmdline.endswith("|arg0|")
    assert env == "[a b  c][]"
    assert exe == "/bin/busybox"


EXIT_CASES = [
    # (volume files, command, exit code, what stderr says): the init's pre-check, then the trampoline's
    ({}, ["/nonexistent"], 127, "no such file or directory"),
    ({}, ["nonexistent-cmd"], 127, "not found"),
    ({}, ["/etc/passwd"], 126, "permission denied"),
    ({}, ["sh", "-c", "exit 3"], 3, ""),
    ({"noshebang": "echo no #! line\n"}, ["/v/noshebang"], 126, "exec /v/noshebang: exec format error"),
    ({"badinterp": "#!/no/such/interpreter\n"}, ["/v/badinterp"], 127,
     "exec /v/badinterp: no such file or directory"),
]


@pytest.mark.parametrize("files,cmd,code,message", EXIT_CASES,
                         ids=["missing_path", "missing_in_PATH", "not_executable", "command_exit_code",
                              "script_without_shebang", "missing_script_interpreter"])
def test_run_exit_codes_and_messages_survive_the_trampoline(run_from_copy, tmp_path, files, cmd, code, message):
    run, _ = run_from_copy
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    r = run(*(["-v", f"{tmp_path}:/v:ro"] if files else []), "busybox", *cmd)
    assert r.returncode == code
    assert message in r.stderr.lower()
