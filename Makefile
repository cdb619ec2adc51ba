# The two commands an operator needs (see README.md):
#   make demo   set everything up on a fresh machine, then run the lab demo
#   make test   set everything up, then run every test tier and the linter; the netns and
#               browser tiers run as on a fresh machine (new HOME, XDG dirs and net-snmp
#               store) and fail if a test leaves state on the machine (see tox.ini)
.PHONY: demo test bootstrap

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/seawall demo $(ARGS)

test: bootstrap
	.venv/bin/tox run -e lint,unit,bpf,netns,browser
