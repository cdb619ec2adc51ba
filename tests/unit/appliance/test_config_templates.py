"""Issue 16, item 4 (policy templates) in the config file: `[templates.NAME]` and a tenant's
`template = "NAME"` resolve with the same rule and validation as SecureWatch's API and pages
(tenants.templates): the template's values, the tenant's own policy keys on top."""

from __future__ import annotations

import pytest

from appliance.config import parse_config
from tenants import ConfigError
from tenants.templates import TEMPLATE_NAME_RULE, followed, overrides_of, parse_values

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
    assert config.templates == {"hosting": {"sensitivity": 2.0, "min_pps": 5000, "syn_auth": "off"}}
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


@pytest.mark.parametrize(("toml", "name"), [('["hosting"]', ["hosting"]), ('{ name = "hosting" }', {"name": "hosting"}),
                                           ("7", 7), ("true", True)])
def test_a_template_that_is_not_a_name_is_a_config_error(toml, name):
    text = CONFIG.replace('template = "hosting"', f"template = {toml}")
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert exc.value.problems == [f"tenants[0].template: {name!r} is not a template name ({TEMPLATE_NAME_RULE})"]


@pytest.mark.parametrize(("alias", "mode"), [(False, "off"), (True, "splice")])
def test_a_follower_sets_syn_auth_with_the_old_syn_protection_key(alias, mode):
    # The old key is the tenant's own: it replaces the syn_auth the template (or the default) gives,
    # as the same key sent to the API does (securewatch.versioned.merged_policy_table).
    for template in ("", 'syn_auth = "reset"'):
        text = CONFIG.replace("syn_protection = false", template).replace(
            "policy = { min_pps = 800 }", f"policy = {{ syn_protection = {str(alias).lower()} }}")
        config = parse_config(text)
        assert config.tenants["alpha"].policy.syn_auth == mode, template


def test_a_follower_that_contradicts_itself_on_syn_auth_is_still_refused():
    text = CONFIG.replace("policy = { min_pps = 800 }", 'policy = { syn_protection = false, syn_auth = "splice" }')
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert exc.value.problems == ["tenant 'alpha': policy.syn_protection: false contradicts policy.syn_auth = "
                                  "'splice' (syn_protection is the old name of syn_auth: set one)"]
