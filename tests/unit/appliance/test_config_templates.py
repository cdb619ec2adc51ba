"""Issue 16, item 4 (policy templates) in the config file: `[templates.NAME]` and a tenant's
`template = "NAME"` resolve with the same rule and validation as SecureWatch's API and pages
(tenants.templates): the template's values, the tenant's own policy keys on top."""

from __future__ import annotations

import pytest

from appliance.config import parse_config
from tenants import ConfigError
from tenants.templates import followed, overrides_of, parse_values

CONFIG = """\
[templates.hosting]
sensitivity = 2.0
min_pps = 5000
syn_protection = false

[[tenants]]
id = "alpha"
prefixes = ["198.51.100.0/24"]
template = "hosting"
policy = { min_pps = 800 }

[[tenants]]
id = "beta"
prefixes = ["203.0.113.0/24"]
"""


def test_item16_config_file_tenants_follow_a_template_with_their_own_keys_on_top():
    config = parse_config(CONFIG)
    alpha, beta = config.tenants["alpha"].policy, config.tenants["beta"].policy
    assert (alpha.sensitivity, alpha.min_pps, alpha.syn_protection) == (2.0, 800, False)
    assert (beta.sensitivity, beta.min_pps, beta.syn_protection) == (1.0, 1000, True)
    assert config.template_links == {"alpha": "hosting"}
    assert config.templates == {"hosting": {"sensitivity": 2.0, "min_pps": 5000, "syn_protection": False}}
    # The same rule SecureWatch applies when a tenant follows the template through the API.
    template = parse_values({"sensitivity": 2.0, "min_pps": 5000, "syn_protection": False})
    assert alpha.to_dict() == followed(template, {"min_pps": 800})
    assert overrides_of(alpha.to_dict(), template) == {"min_pps": 800}


def test_item16_config_file_templates_are_validated_like_a_policy():
    text = CONFIG.replace("sensitivity = 2.0", "sensitivity = 20.0").replace(
        'template = "hosting"', 'template = "hostnig"') + '\n[templates.Bad]\nmin_pps = 1\n'
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    problems = exc.value.problems
    assert any(p.startswith("templates.hosting.sensitivity: must be between 0.1 and 10") for p in problems), problems
    assert any(p.startswith("templates.Bad: 'Bad' is not a template name") for p in problems), problems
    assert any(p.startswith("tenants[0].template: no template 'hostnig'") for p in problems), problems
