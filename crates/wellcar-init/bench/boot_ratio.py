#!/usr/bin/env python3
"""Benchmark: time from the kernel starting /init to the exec of the real init, Wellcar's Rust
initramfs against Debian's initramfs-tools initrd, same kernel, same run, printed as a ratio.

Both boots use direct kernel boot under QEMU with init=/exec-marker: a tiny static program
(exec-marker.c) that writes "exec-marker" to /dev/kmsg and execs systemd, so the end point is
the same exec for both initrds. Start = the kernel's "Run /init as init process" line.

Inputs (all from a `wellcar build` output directory and the host):
  --out DIR          build output (manifest.json, vmlinuz, disk image, initramfs)
  --rootfs DIR       the build's Debian tree (default OUT/.work/rootfs)
  --debian-initrd F  Debian's initrd for the same kernel, e.g. /boot/initrd.img-<kver> after
                     `apt-get install linux-image-<kver> initramfs-tools` on a Debian 12 host
Needs: qemu-system-x86_64, gcc, debugfs, mkfs.ext4. Writes scratch files to --work.
Usage: boot_ratio.py --out out --debian-initrd /boot/initrd.img-6.1.0-56-cloud-amd64 [--runs 5]
"""
import argparse, json, os, re, shutil, struct, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))

def sh(*cmd, **kw):
    subprocess.run(cmd, check=True, **kw)

def prepare(out, rootfs, work):
    os.makedirs(work, exist_ok=True)
    marker = os.path.join(work, 'exec-marker')
    sh('gcc', '-static', '-O2', '-o', marker, os.path.join(HERE, 'exec-marker.c'))
    m = json.load(open(os.path.join(out, 'manifest.json')))
    disk = os.path.join(work, 'wellcar.img')
    sh('cp', '--sparse=always', os.path.join(out, m['disk_image']), disk)
    # Put the marker on ROOT (partition 9): extract, fsck (replays nothing on a fresh image), write.
    with open(disk, 'rb') as f:
        f.seek(1024 + 8 * 128)
        first, last = struct.unpack('<QQ', f.read(128)[32:48])
    part = os.path.join(work, 'root.ext4')
    sh('dd', f'if={disk}', f'of={part}', 'bs=512', f'skip={first}', f'count={last - first + 1}', 'status=none')
    sh('debugfs', '-w', '-R', f'write {marker} exec-marker', part, stderr=subprocess.DEVNULL)
    sh('debugfs', '-w', '-R', 'sif exec-marker mode 0100755', part, stderr=subprocess.DEVNULL)
    sh('dd', f'if={part}', f'of={disk}', 'bs=512', f'seek={first}', 'conv=notrunc,sparse', 'status=none')
    os.remove(part)
    # Debian's root: the same tree as a plain ext4 root (with /etc back in place).
    tree = os.path.join(work, 'debian-root')
    shutil.rmtree(tree, ignore_errors=True)
    sh('cp', '-a', rootfs, tree)
    shutil.rmtree(os.path.join(tree, 'etc'))
    sh('cp', '-a', os.path.join(tree, 'usr/share/wellcar/etc'), os.path.join(tree, 'etc'))
    shutil.copy(marker, os.path.join(tree, 'exec-marker'))
    debian = os.path.join(work, 'debian-root.img')
    sh('truncate', '-s', '2G', debian)
    sh('mkfs.ext4', '-q', '-F', '-L', 'DEBROOT', '-d', tree, debian)
    shutil.rmtree(tree)
    return m, disk, debian

def boot(kernel, initrd, disk, append):
    cmd = ['qemu-system-x86_64', '-accel', 'tcg', '-m', '1536', '-smp', '2', '-nographic',
           '-no-reboot', '-kernel', kernel, '-initrd', initrd,
           '-append', append + ' console=ttyS0,115200n8 init=/exec-marker',
           '-drive', f'file={disk},if=virtio,format=raw,snapshot=on']
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors='replace')
    start = None
    deadline = time.time() + 300
    tail = []
    try:
        for line in p.stdout:
            tail = (tail + [line])[-40:]
            m = re.match(r'\[\s*(\d+\.\d+)\]', line)
            if m and 'Run /init as init process' in line:
                start = float(m.group(1))
            if m and 'exec-marker: exec systemd' in line and start is not None:
                return float(m.group(1)) - start
            if time.time() > deadline:
                break
    finally:
        p.kill(); p.wait()
    sys.stderr.write(''.join(tail))
    raise SystemExit(f'no exec marker booting {initrd}')

def main():
    a = argparse.ArgumentParser()
    a.add_argument('--out', required=True)
    a.add_argument('--debian-initrd', required=True)
    a.add_argument('--rootfs', help='Debian tree of the build (default: OUT/.work/rootfs)')
    a.add_argument('--runs', type=int, default=5)
    a.add_argument('--work', default='/tmp/wellcar-boot-bench')
    args = a.parse_args()
    m, disk, debian = prepare(args.out, args.rootfs or os.path.join(args.out, '.work/rootfs'), args.work)
    kernel = os.path.join(args.out, m['kernel'])
    ours_initrd = os.path.join(args.out, m['initramfs'])
    ours_append = ('mount.usr=/dev/mapper/usr verity.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132 '
                   f'verity.usrhash={m["verity_root_hash"]} mount.usrflags=ro root=LABEL=ROOT rootflags=rw')
    times = {'wellcar': [], 'debian': []}
    for i in range(args.runs):
        times['wellcar'].append(boot(kernel, ours_initrd, disk, ours_append))
        times['debian'].append(boot(kernel, args.debian_initrd, debian, 'root=LABEL=DEBROOT rw'))
        print(f"run {i}: wellcar {times['wellcar'][-1]*1000:.0f} ms, debian {times['debian'][-1]*1000:.0f} ms", flush=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"/init start -> exec of init, median of {args.runs}: wellcar {med['wellcar']*1000:.0f} ms, "
          f"debian {med['debian']*1000:.0f} ms, ratio {med['wellcar'] / med['debian'] * 100:.1f} % (goal <= 20 %)")
    ours_size, deb_size = os.path.getsize(ours_initrd), os.path.getsize(args.debian_initrd)
    print(f"initramfs size: wellcar {ours_size} B, debian {deb_size} B, ratio {ours_size / deb_size * 100:.1f} % (goal <= 33 %)")

if __name__ == '__main__':
    main()
