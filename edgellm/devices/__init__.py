"""Device profiles: the schema, where profiles are found, and writing new ones."""

from edgellm.devices.catalog import all_profiles, find, load_file, user_dir
from edgellm.devices.schema import Accelerator, Budgets, Cpu, DeviceProfile, Memory

__all__ = ["Accelerator", "Budgets", "Cpu", "DeviceProfile", "Memory",
           "all_profiles", "find", "load_file", "user_dir"]
