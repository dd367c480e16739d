"""Small helpers over the Linux system interface, shared by every fim library.

The bottom of the dependency graph: fimfs, sandbox and cli import it; it imports
nothing of fim and nothing outside the standard library, so fimfs and sandbox can
share it without importing each other.

  files.py     writing a file whole or not at all (a temporary file renamed over it)
  procs.py     waiting for a process to end through a pidfd
  mounts.py    the mount table (/proc/self/mountinfo) and unmounting with whatever
               this host allows (fusermount3, fusermount, umount, umount2)
"""
