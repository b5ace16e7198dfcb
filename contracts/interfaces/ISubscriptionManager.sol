// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IBillingBase} from "./IBillingBase.sol";

/// @title ISubscriptionManager
/// @notice Events, errors and types of chainbill's recurring billing. Events are the public
/// interface to the off-chain mirror: every state change emits exactly one of them.
interface ISubscriptionManager is IBillingBase {
    /// @notice Pricing terms of a plan. Immutable once created, except `active`.
    struct Plan {
        /// @notice Merchant that created the plan and receives its charges.
        address merchant;
        /// @notice Length of one billing period, in seconds.
        uint32 period;
        /// @notice Free trial before the first charge, in seconds (0 = charge at subscribe).
        uint32 trialPeriod;
        /// @notice How long a failed charge may stay unpaid before the subscription lapses, in seconds.
        uint32 gracePeriod;
        /// @notice ERC-20 token the plan is paid in.
        address token;
        /// @notice Price of one period, in token base units.
        uint96 price;
        /// @notice Price of one usage unit above the included ones, in token base units
        /// (0 = not metered; metered billing arrives in a later version).
        uint96 unitPrice;
        /// @notice Usage units included in every period at no extra charge.
        uint64 includedUnits;
        /// @notice Whether new subscribers are accepted.
        bool active;
    }

    /// @notice State of one subscription as stored.
    struct Subscription {
        /// @notice Wallet that pays the charges.
        address subscriber;
        /// @notice Time up to which the subscription is paid (or in trial), in unix seconds;
        /// the next charge falls due at exactly this time.
        uint40 paidThrough;
        /// @notice Plan subscribed to.
        uint40 planId;
        /// @notice Stored lifecycle state (see `SubscriptionStatus` for the derived one).
        SubscriptionState state;
        /// @notice Bit set: 1 = cancel at period end, 2 = past due, 4 = in trial, 8 = metered
        /// plan, 16 = holds credit.
        uint8 flags;
        /// @notice Largest amount the subscriber allows to be charged per period, in token base units.
        uint96 maxAmountPerPeriod;
        /// @notice Credit carried forward to the next charge, in token base units (plan changes).
        uint96 credit;
        /// @notice Usage units reported in the current period (metered plans).
        uint64 usageUnits;
    }

    /// @notice Terms a subscriber signs (EIP-712) so that anyone may submit its subscription.
    struct SubscriptionIntent {
        /// @notice Wallet (EOA or EIP-1271 contract) that subscribes and pays.
        address subscriber;
        /// @notice Plan subscribed to.
        uint256 planId;
        /// @notice Spending cap per period, in token base units.
        uint256 maxAmountPerPeriod;
        /// @notice The subscriber's current nonce in this contract (`nonces(subscriber)`).
        uint256 nonce;
        /// @notice Last moment the intent may be submitted, in unix seconds.
        uint256 deadline;
    }

    /// @notice Stored lifecycle state of a subscription.
    enum SubscriptionState {
        None,
        Live,
        Canceled,
        Lapsed
    }

    /// @notice Lifecycle status as seen at the current block time.
    enum SubscriptionStatus {
        None,
        Trialing,
        Active,
        PastDue,
        Canceled,
        Lapsed
    }

    /// @notice Why a charge could not be collected.
    enum ChargeFailureReason {
        InsufficientAllowance,
        InsufficientBalance,
        TransferRejected
    }

    /// @notice Why `chargeBatch` passed over a subscription without trying to collect.
    enum ChargeSkipReason {
        NotFound,
        NotDue,
        NotLive,
        GraceExpired
    }

    /// @notice A merchant created a plan.
    /// @param planId Id of the new plan.
    /// @param merchant The merchant, who receives the charges.
    /// @param token ERC-20 token of the plan.
    /// @param price Price per period, in token base units.
    /// @param period Period length, in seconds.
    /// @param trialPeriod Trial length, in seconds.
    /// @param gracePeriod Grace period after a failed charge, in seconds.
    /// @param unitPrice Price per usage unit above the included ones, in token base units.
    /// @param includedUnits Usage units included per period.
    event PlanCreated(
        uint256 indexed planId,
        address indexed merchant,
        address indexed token,
        uint256 price,
        uint256 period,
        uint256 trialPeriod,
        uint256 gracePeriod,
        uint256 unitPrice,
        uint256 includedUnits
    );

    /// @notice A merchant stopped a plan from taking new subscribers (existing ones go on).
    /// @param planId The plan.
    event PlanDeactivated(uint256 indexed planId);

    /// @notice A customer subscribed to a plan.
    /// @param subscriptionId Id of the new subscription.
    /// @param planId The plan.
    /// @param subscriber The paying wallet.
    /// @param maxAmountPerPeriod Spending cap per period, in token base units.
    /// @param startedAt Start of the subscription, in unix seconds.
    /// @param paidThrough End of the trial or of the first paid period, in unix seconds.
    event Subscribed(
        uint256 indexed subscriptionId,
        uint256 indexed planId,
        address indexed subscriber,
        uint256 maxAmountPerPeriod,
        uint256 startedAt,
        uint256 paidThrough
    );

    /// @notice One period was charged (also emitted for the first period at subscribe).
    /// @param subscriptionId The subscription.
    /// @param periodStart Start of the period paid for, in unix seconds.
    /// @param paidThrough End of the period paid for (the next due time), in unix seconds.
    /// @param amount Amount debited from the subscriber, in token base units.
    /// @param fee Part of `amount` paid to the platform fee recipient, in token base units.
    event Charged(
        uint256 indexed subscriptionId, uint256 periodStart, uint256 paidThrough, uint256 amount, uint256 fee
    );

    /// @notice A due charge could not be collected; the subscription is past due.
    /// @param subscriptionId The subscription.
    /// @param dueAt When the charge fell due, in unix seconds.
    /// @param amount Amount that was due, in token base units.
    /// @param reason Why it failed.
    event ChargeFailed(uint256 indexed subscriptionId, uint256 dueAt, uint256 amount, ChargeFailureReason reason);

    /// @notice `chargeBatch` passed over a subscription (another keeper was first, it was
    /// canceled, or it has lapsed).
    /// @param subscriptionId The subscription.
    /// @param reason Why it was passed over.
    event ChargeSkipped(uint256 indexed subscriptionId, ChargeSkipReason reason);

    /// @notice A subscription was canceled, at once or at the end of the paid period.
    /// @param subscriptionId The subscription.
    /// @param canceledBy Subscriber, merchant or operator who canceled.
    /// @param effectiveAt When it stops, in unix seconds.
    /// @param atPeriodEnd True when it runs to the end of the paid period.
    event SubscriptionCanceled(
        uint256 indexed subscriptionId, address indexed canceledBy, uint256 effectiveAt, bool atPeriodEnd
    );

    /// @notice A past-due subscription stayed unpaid through its grace period and ended.
    /// @param subscriptionId The subscription.
    /// @param lapsedAt End of the grace period, in unix seconds.
    event SubscriptionLapsed(uint256 indexed subscriptionId, uint256 lapsedAt);

    /// @notice The merchant (or its operator) reported usage of a metered subscription.
    /// @param subscriptionId The subscription.
    /// @param usageRecordId The merchant-unique id of this usage record.
    /// @param units Units in this record.
    /// @param unbilledUnits Units reported since the last charge, this record included.
    /// @param billableAt When the next charge, which bills them, falls due, in unix seconds.
    event UsageReported(
        uint256 indexed subscriptionId,
        bytes32 indexed usageRecordId,
        uint256 units,
        uint256 unbilledUnits,
        uint256 billableAt
    );

    /// @notice A charge (emitted just before its `Charged`) included metered usage.
    /// @param subscriptionId The subscription.
    /// @param units Units billed (all reported since the previous charge).
    /// @param overageAmount Amount for the units above the included ones, in token base units.
    event UsageCharged(uint256 indexed subscriptionId, uint256 units, uint256 overageAmount);

    /// @notice Credit from a downgrade reduced a charge (emitted just before its `Charged`).
    /// @param subscriptionId The subscription.
    /// @param amount Credit used, in token base units.
    /// @param remainingCredit Credit left for later charges, in token base units.
    event CreditApplied(uint256 indexed subscriptionId, uint256 amount, uint256 remainingCredit);

    /// @notice The subscriber moved to another plan of the same merchant and token; the
    /// billing anchor (`paidThrough`) is kept and the rest of the period prorated.
    /// @param subscriptionId The subscription.
    /// @param fromPlanId The previous plan.
    /// @param toPlanId The new plan.
    /// @param charged Amount charged at once (upgrade, plus unbilled usage), in token base units.
    /// @param fee Part of `charged` paid to the platform fee recipient, in token base units.
    /// @param credit Credit carried forward after the change (downgrade), in token base units.
    /// @param maxAmountPerPeriod The new spending cap per period, in token base units.
    event PlanChanged(
        uint256 indexed subscriptionId,
        uint256 indexed fromPlanId,
        uint256 indexed toPlanId,
        uint256 charged,
        uint256 fee,
        uint256 credit,
        uint256 maxAmountPerPeriod
    );

    /// @notice A subscriber invalidated the signed intents it had not had submitted.
    /// @param subscriber The subscriber.
    /// @param revokedNonce The nonce that no longer works (the next one is `revokedNonce + 1`).
    event IntentsRevoked(address indexed subscriber, uint256 revokedNonce);

    /// @notice No plan has this id.
    /// @param planId The id asked for.
    error PlanNotFound(uint256 planId);

    /// @notice The plan takes no new subscribers.
    /// @param planId The plan.
    error PlanInactive(uint256 planId);

    /// @notice The caller is not the plan's merchant (or its operator).
    /// @param planId The plan.
    /// @param caller The caller.
    error NotPlanMerchant(uint256 planId, address caller);

    /// @notice A period (or trial or grace period) is out of range.
    /// @param period The value given, in seconds.
    /// @param min Smallest allowed value, in seconds.
    /// @param max Largest allowed value, in seconds.
    error InvalidPeriod(uint256 period, uint256 min, uint256 max);

    /// @notice A price is zero or does not fit the stored width.
    /// @param price The price given, in token base units.
    /// @param max Largest allowed price, in token base units.
    error InvalidPrice(uint256 price, uint256 max);

    /// @notice The subscriber's cap per period is below the plan price (or above the storable maximum).
    /// @param maxAmountPerPeriod The cap given, in token base units.
    /// @param price The plan price, in token base units.
    error CapBelowPrice(uint256 maxAmountPerPeriod, uint256 price);

    /// @notice No subscription has this id.
    /// @param subscriptionId The id asked for.
    error SubscriptionNotFound(uint256 subscriptionId);

    /// @notice The caller may not cancel this subscription.
    /// @param subscriptionId The subscription.
    /// @param caller The caller.
    error NotSubscriberOrMerchant(uint256 subscriptionId, address caller);

    /// @notice The subscription is canceled, lapsed, or set to cancel at the end of its paid
    /// period, which has come.
    /// @param subscriptionId The subscription.
    /// @param status Its status now.
    error SubscriptionNotLive(uint256 subscriptionId, SubscriptionStatus status);

    /// @notice The subscription is set to end with its paid period: it will not be charged
    /// again, and only an immediate cancel can still change it.
    /// @param subscriptionId The subscription.
    /// @param effectiveAt When it ends, in unix seconds.
    error CancelAlreadyScheduled(uint256 subscriptionId, uint256 effectiveAt);

    /// @notice The period is not due yet: nothing may be charged before `dueAt`.
    /// @param subscriptionId The subscription.
    /// @param dueAt When the next charge falls due, in unix seconds.
    /// @param now_ The current block time, in unix seconds.
    error ChargeNotDue(uint256 subscriptionId, uint256 dueAt, uint256 now_);

    /// @notice The grace period of a past-due subscription is over: it can only be lapsed.
    /// @param subscriptionId The subscription.
    /// @param graceEndedAt End of the grace period, in unix seconds.
    error GracePeriodExpired(uint256 subscriptionId, uint256 graceEndedAt);

    /// @notice The subscription cannot be lapsed yet: its grace period is still running.
    /// @param subscriptionId The subscription.
    /// @param lapsesAt When it can be lapsed, in unix seconds.
    error GracePeriodRunning(uint256 subscriptionId, uint256 lapsesAt);

    /// @notice The plan is not metered: it takes no usage reports.
    /// @param planId The plan.
    error PlanNotMetered(uint256 planId);

    /// @notice A usage record with this id was already reported by the merchant.
    /// @param merchant The merchant.
    /// @param usageRecordId The duplicate id.
    error DuplicateUsageRecord(address merchant, bytes32 usageRecordId);

    /// @notice The usage would bring the next charge above the subscriber's cap.
    /// @param subscriptionId The subscription.
    /// @param amount What the next charge would be, in token base units.
    /// @param maxAmountPerPeriod The subscriber's cap, in token base units.
    error UsageExceedsCap(uint256 subscriptionId, uint256 amount, uint256 maxAmountPerPeriod);

    /// @notice The usage count does not fit (zero units, or more than 2**64 - 1 in a period).
    /// @param units The units given.
    error InvalidUsage(uint256 units);

    /// @notice Only the subscriber may do this.
    /// @param subscriptionId The subscription.
    /// @param caller The caller.
    error NotSubscriber(uint256 subscriptionId, address caller);

    /// @notice Plans can only be changed between plans of the same merchant and token.
    /// @param fromPlanId The current plan.
    /// @param toPlanId The plan asked for.
    error PlanChangeNotAllowed(uint256 fromPlanId, uint256 toPlanId);

    /// @notice The period is due: charge it (or let it lapse) before changing plans.
    /// @param subscriptionId The subscription.
    /// @param dueAt When the period fell due, in unix seconds.
    error PlanChangeWhileDue(uint256 subscriptionId, uint256 dueAt);

    /// @notice The amount to charge now is above the spending cap.
    /// @param amount The amount, in token base units.
    /// @param maxAmountPerPeriod The cap, in token base units.
    error ChargeAboveCap(uint256 amount, uint256 maxAmountPerPeriod);

    /// @notice The signed intent's deadline has passed.
    /// @param deadline The deadline, in unix seconds.
    /// @param now_ The current block time, in unix seconds.
    error IntentExpired(uint256 deadline, uint256 now_);

    /// @notice The signature is not the subscriber's (ECDSA for accounts, EIP-1271 for contracts).
    /// @param subscriber The subscriber named in the intent.
    error InvalidSignature(address subscriber);
}
