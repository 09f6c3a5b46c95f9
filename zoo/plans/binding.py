"""Policy binding, written once: resolve a policy, bind its arguments, run it on a table.

``bind(policy, args, catalog)`` resolves a policy name (or the CLI form ``"freeze-to:depth=3"``)
in the catalog it is given and validates the arguments; the :class:`BoundPolicy` it returns
runs on any :class:`~zoo.ParamTable` (``bound.run(table, epoch=...)``). ``zoo.plan``,
:class:`~zoo.ScheduleDriver` and ``zoo.adapt`` all go through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.core.plugins import format_origin
from zoo.core.policy_args import bind_policy_args, describe_args, parse_policy_spec
from zoo.core.specs import PolicySpec
from zoo.errors import PlanError, PolicyArgumentError, UnknownNameError, ZooError, short_repr
from zoo.plans.plan import Plan, jsonable, name_list

if TYPE_CHECKING:
    from zoo.core.catalog import Catalog
    from zoo.tables.table import ParamTable


@dataclass(frozen=True)
class BoundPolicy:
    """A policy with validated arguments, ready to run on a table."""

    spec: PolicySpec
    args: Mapping[str, Any]
    #: the raw ``key=value`` texts of the CLI form (which arguments the caller wrote)
    raw: Mapping[str, list[str]]
    #: how messages name the policy (see :func:`policy_origin`)
    origin: str
    #: where the adapter kinds of the plans' additions resolve
    catalog: Catalog | None = field(default=None, compare=False, repr=False)

    def run(self, table: ParamTable, *, epoch: int | None = None) -> Plan:
        """The plan of this policy for ``table`` (at ``epoch`` for a schedule policy)."""
        return run_policy(
            self.spec, table, self.args, epoch=epoch, origin=self.origin, catalog=self.catalog
        )


def bind(policy: str | PolicySpec, args: Mapping[str, Any], catalog: Catalog) -> BoundPolicy:
    """Resolve ``policy`` in ``catalog`` and validate ``args`` with the ones written in it."""
    spec, raw = resolve_policy(policy, catalog)
    bound = bind_policy_args(spec, raw, dict(args))
    return BoundPolicy(spec, bound, raw, policy_origin(spec, catalog), catalog)


def resolve_policy(
    policy: str | PolicySpec, catalog: Catalog
) -> tuple[PolicySpec, dict[str, list[str]]]:
    """The spec a policy text names in ``catalog``, and the raw arguments written in it."""
    if isinstance(policy, PolicySpec):
        return policy, {}
    name, raw = parse_policy_spec(policy)
    try:
        return catalog.policy(name), raw
    except UnknownNameError:
        head, sep, tail = name.rpartition(":")
        if sep and not raw:
            try:
                spec = catalog.policy(head)
            except ZooError:
                spec = None
            if spec is not None:
                raise PolicyArgumentError(
                    f"argument {tail!r} of policy {spec.qualified_name!r} is not key=value; "
                    f"valid arguments: {describe_args(spec)}"
                ) from None
        raise


def policy_origin(spec: PolicySpec, catalog: Catalog | None = None) -> str:
    """How messages name a policy: ``'zoo:gradual' (plugin zoo (built-in))``.

    The plugin's distribution and version come from ``catalog``'s plugin host when given.
    """
    name = spec.qualified_name if spec.plugin else spec.name
    if not spec.plugin:
        return f"policy {name!r} (not registered by a plugin)"
    if catalog is None:
        return f"policy {name!r} (plugin {spec.plugin})"
    try:
        record = catalog.host.records.get(spec.plugin)
        where = format_origin(record) if record is not None else spec.plugin
    except Exception:  # describing must never fail
        where = spec.plugin
    return f"policy {name!r} (plugin {where})"


def run_policy(
    spec: PolicySpec,
    table: ParamTable,
    args: Mapping[str, Any],
    *,
    epoch: int | None = None,
    origin: str | None = None,
    catalog: Catalog | None = None,
) -> Plan:
    """Call ``spec.plan`` on ``table`` with validated ``args`` and make a complete Plan of it.

    A result that is neither a Plan nor an iterable of names, unknown names, or an exception
    inside the policy become a :class:`~zoo.PlanError` naming the policy and its plugin
    (``origin``, as :func:`policy_origin` says it). The adapter kinds of the plan's additions
    are resolved in ``catalog`` (an unknown kind is the policy's error) and kept on the plan,
    which can then be applied without a catalog. The policy's declared learning-rate scale
    (:attr:`~zoo.PolicySpec.lr_scale`) multiplies every trained parameter's (:func:`declared_rate`).
    """
    origin = origin or policy_origin(spec)
    name = spec.qualified_name if spec.plugin else spec.name
    kwargs = dict(args)
    if spec.schedule:
        epoch = 0 if epoch is None else epoch
        try:
            epoch = checks.integer(epoch, "epoch", 0)
        except checks.Invalid as exc:
            raise PolicyArgumentError(f"policy {name!r}: {exc}") from None
        kwargs["epoch"] = epoch
    elif epoch is not None:
        raise PolicyArgumentError(
            f"policy {name!r} is not a schedule, so it takes no epoch; schedule policies "
            "(such as zoo:gradual) do"
        )
    try:
        result = spec.plan(table, **kwargs)
    except PolicyArgumentError as exc:
        if str(exc).startswith("policy "):
            raise
        raise PolicyArgumentError(f"policy {name!r}: {exc}") from exc
    except PlanError as exc:
        raise PlanError(f"{origin}: {exc}") from exc
    except ZooError:
        raise
    except Exception as exc:
        raise PlanError(f"{origin} failed: {type(exc).__name__}: {exc}") from exc
    try:
        if isinstance(result, Plan):
            made = result.complete(table)
        elif isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
            raise PlanError(
                f"returned {type(result).__name__} {short_repr(result)}; a policy returns a "
                "zoo.Plan or an iterable of parameter names"
            )
        else:
            made = Plan.from_table(table, name_list(result, "the returned names"))
    except PlanError as exc:
        message = str(exc)
        if not message.startswith("policy "):
            message = f"{origin}: {message}"
        raise PlanError(message) from exc
    additions, kinds = made.additions, {}
    if additions and catalog is not None:
        resolved = []
        for addition in additions:
            try:
                kind = catalog.adapter_kind(addition.kind)
            except ZooError as exc:
                raise PlanError(f"{origin}: adds an adapter of an unusable kind: {exc}") from exc
            kinds[kind.qualified_name] = kind
            resolved.append(replace(addition, kind=kind.qualified_name))
        additions = tuple(resolved)
    return replace(
        declared_rate(made, spec.lr_scale),
        policy=spec.qualified_name if spec.plugin else spec.name,
        args=jsonable(args),
        epoch=epoch if spec.schedule else None,
        table=table,
        backbone=table.backbone,
        additions=additions,
        adapter_specs=kinds,
    )


def declared_rate(plan: Plan, scale: float) -> Plan:
    """``plan`` with every trained parameter's lr scale multiplied by ``scale`` (a policy's
    declared rate, :attr:`~zoo.PolicySpec.lr_scale`)."""
    if scale == 1.0:
        return plan
    params = {
        name: replace(item, lr_scale=item.lr_scale * scale) if item.trainable else item
        for name, item in plan.params.items()
    }
    return replace(plan, params=params)
