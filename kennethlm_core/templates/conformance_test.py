"""The conformance kit checks $slot '$name' like every $slot.

Add tests of your own below: numbers against a reference, the property your idea is about,
the errors it raises.
"""

from kennethlm_core.testing import conformance

TestStarter = conformance("$slot", "$name")
