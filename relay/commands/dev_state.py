"""Development mode's state directory, as the commands read it: `serve --dev` (through the kit)
writes dev.json there, naming the relay and its API token, which `push` and `status` read when none
is given. The kit (relay_devkit.dev_mode) imports these names from here: the reader defines the
file, and the relay may not import the kit."""

DEV_STATE_DIR = ".relay-dev"
DEV_JSON = "dev.json"
DEV_AUTH_CHOICES = ("token", "certificate")  # the simulator app's APNs credentials
