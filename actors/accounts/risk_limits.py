"""Risk limits checked against a portfolio snapshot."""

from __future__ import annotations

from dataclasses import dataclass

from storage import utc_now
from storage.ib_models import PortfolioSnapshot, RiskBreach


@dataclass(frozen=True)
class RiskLimits:
    """Limits of one account; ``None`` leaves a limit unchecked.

    Parameters:
      max_position_value: Largest absolute market value of one position (account currency).
      max_concentration_pct: Largest share of net liquidation one position may be, in percent.
      max_gross_exposure: Largest sum of absolute position values.
      max_daily_loss: Largest loss of the day, as a positive amount.
    """

    max_position_value: float | None = None
    max_concentration_pct: float | None = None
    max_gross_exposure: float | None = None
    max_daily_loss: float | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (got {value!r})")
        if self.max_concentration_pct is not None and self.max_concentration_pct > 100:
            raise ValueError(
                f"max_concentration_pct must be at most 100 (got {self.max_concentration_pct!r})"
            )

    @property
    def configured(self) -> bool:
        """True when at least one limit is set."""
        return any(value is not None for value in vars(self).values())


def evaluate(limits: RiskLimits, snapshot: PortfolioSnapshot) -> list[RiskBreach]:
    """Every limit ``snapshot`` breaks (positions without a mark count at cost)."""
    breaches = []

    def breach(name: str, limit: float, actual: float, detail: str, conid: int | None = None) -> None:
        breaches.append(
            RiskBreach(
                account=snapshot.account,
                snapshot_id=snapshot.id,
                limit_name=name,
                limit_value=limit,
                actual_value=round(actual, 6),
                conid=conid,
                detail=detail,
                detected_at=utc_now(),
            )
        )

    for position in snapshot.positions:
        value = abs(position["exposure"])
        if limits.max_position_value is not None and value > limits.max_position_value:
            breach("max_position_value", limits.max_position_value, value,
                   f"{position['symbol']} is worth {value:,.2f}", position["conid"])  # fmt: skip
        net_liquidation = snapshot.net_liquidation or 0
        if limits.max_concentration_pct is not None and net_liquidation > 0:
            share = value / net_liquidation * 100
            if share > limits.max_concentration_pct:
                detail = f"{position['symbol']} is {share:.1f}% of net liquidation"
                breach(
                    "max_concentration_pct", limits.max_concentration_pct, share, detail, position["conid"]
                )
    if limits.max_gross_exposure is not None and snapshot.gross_exposure > limits.max_gross_exposure:
        breach("max_gross_exposure", limits.max_gross_exposure, snapshot.gross_exposure,
               f"gross exposure {snapshot.gross_exposure:,.2f}")  # fmt: skip
    loss = -(snapshot.daily_pnl or 0)
    if limits.max_daily_loss is not None and loss > limits.max_daily_loss:
        breach("max_daily_loss", limits.max_daily_loss, loss, f"lost {loss:,.2f} today")
    return breaches
