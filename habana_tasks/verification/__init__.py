"""What makes an image publishable: the target kernel's own modules, the image checks, module
signatures, and the load test that boots the exact kernel under qemu.
May import core, config, registry and engine."""
