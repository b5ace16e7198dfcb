// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

import {BillingBase} from "./base/BillingBase.sol";
import {ISubscriptionManager} from "./interfaces/ISubscriptionManager.sol";

/// @title SubscriptionManager
/// @notice Recurring billing on a fixed schedule. A merchant publishes plans with immutable
/// terms (a price per period, and for metered plans a unit price above a number of included
/// units); a customer subscribes with an allowance (or an EIP-2612 permit, or a signed
/// EIP-712 intent that anyone may submit) and a spending cap; anyone may then trigger the
/// charge of each period once it is due, and never twice. A charge that cannot be collected
/// marks the subscription past due instead of reverting; past due beyond the grace period,
/// the subscription lapses. Subscribers may move between plans of the same merchant and
/// token with proration.
/// @dev One deployment serves many merchants. All amounts are token base units, all times
/// unix seconds. The base price is charged in advance for the period that starts; metered
/// usage in arrears, with the next charge.
contract SubscriptionManager is ISubscriptionManager, BillingBase, EIP712, Nonces {
    uint8 private constant _FLAG_CANCEL_AT_PERIOD_END = 1;
    uint8 private constant _FLAG_PAST_DUE = 2;
    uint8 private constant _FLAG_IN_TRIAL = 4;
    uint8 private constant _FLAG_METERED = 8;
    uint8 private constant _FLAG_HAS_CREDIT = 16;
    /// @dev Subscriptions whose charge needs the second storage slot (usage, credit).
    uint8 private constant _FLAGS_WITH_DETAILS = _FLAG_METERED | _FLAG_HAS_CREDIT;

    bytes32 private constant _INTENT_TYPEHASH = keccak256(
        "SubscriptionIntent(address subscriber,uint256 planId,uint256 maxAmountPerPeriod,uint256 nonce,uint256 deadline)"
    );

    /// @notice Shortest billing period accepted, in seconds (one hour).
    uint256 public constant MIN_PERIOD = 1 hours;
    /// @notice Shortest grace period accepted, in seconds (one hour): the window in which a
    /// keeper can charge a due period before the subscription lapses.
    uint256 public constant MIN_GRACE_PERIOD = 1 hours;
    /// @notice Longest billing period, trial or grace period accepted, in seconds (about 10 years).
    uint256 public constant MAX_PERIOD = 3650 days;

    mapping(uint256 planId => Plan) private _plans;
    mapping(uint256 subscriptionId => Subscription) private _subscriptions;
    mapping(bytes32 merchantUsageRecord => bool reported) private _usageRecords;
    uint40 private _planCount;
    uint40 private _subscriptionCount;

    /// @dev What the next charge of a subscription consists of.
    struct ChargeAmount {
        uint256 amount;
        uint256 units;
        uint256 overage;
        uint256 creditApplied;
        uint256 creditLeft;
    }

    /// @param initialOwner May pause and unpause in an emergency.
    /// @param feeRecipient Receives the platform fee.
    /// @param feeBps Platform fee in basis points of every charge (at most `MAX_FEE_BPS`).
    constructor(address initialOwner, address feeRecipient, uint256 feeBps)
        BillingBase(initialOwner, feeRecipient, feeBps)
        EIP712("chainbill SubscriptionManager", "1")
    {}

    // ------------------------------------------------------------------ plans

    /// @notice Creates a flat-priced plan paid to the caller. Its terms can never change.
    /// @param token ERC-20 token of the plan.
    /// @param price Price per period, in token base units (1 to 2**96 - 1).
    /// @param period Period length, in seconds (`MIN_PERIOD` to `MAX_PERIOD`).
    /// @param trialPeriod Free trial before the first charge, in seconds (0 for none).
    /// @param gracePeriod How long after its due time a period may still be charged (and a
    /// failed charge retried) before the subscription lapses, in seconds (at least `MIN_GRACE_PERIOD`).
    /// @return planId Id of the new plan.
    function createPlan(IERC20 token, uint256 price, uint256 period, uint256 trialPeriod, uint256 gracePeriod)
        external
        whenNotPaused
        returns (uint256 planId)
    {
        if (price == 0) revert InvalidPrice(price, type(uint96).max);
        return _createPlan(token, price, period, trialPeriod, gracePeriod, 0, 0);
    }

    /// @notice Creates a metered plan paid to the caller: a base price per period (may be 0)
    /// plus `unitPrice` for every usage unit above `includedUnits` in a period, billed with the
    /// next charge. Its terms can never change.
    /// @param token ERC-20 token of the plan.
    /// @param price Base price per period, in token base units (0 to 2**96 - 1).
    /// @param period Period length, in seconds.
    /// @param trialPeriod Free trial before the first charge, in seconds.
    /// @param gracePeriod Grace period after a due time, in seconds.
    /// @param unitPrice Price per unit above the included ones, in token base units (1 to 2**96 - 1).
    /// @param includedUnits Units included in every period at no charge (at most 2**64 - 1).
    /// @return planId Id of the new plan.
    function createMeteredPlan(
        IERC20 token,
        uint256 price,
        uint256 period,
        uint256 trialPeriod,
        uint256 gracePeriod,
        uint256 unitPrice,
        uint256 includedUnits
    ) external whenNotPaused returns (uint256 planId) {
        if (unitPrice == 0 || unitPrice > type(uint96).max) revert InvalidPrice(unitPrice, type(uint96).max);
        if (includedUnits > type(uint64).max) revert InvalidUsage(includedUnits);
        return _createPlan(token, price, period, trialPeriod, gracePeriod, unitPrice, includedUnits);
    }

    /// @notice Stops a plan from taking new subscribers; existing subscriptions go on.
    /// @param planId The plan (caller must be its merchant or the merchant's operator).
    function deactivatePlan(uint256 planId) external {
        Plan storage plan = _existingPlan(planId);
        _requireMerchantOrOperator(plan.merchant);
        if (!plan.active) revert PlanInactive(planId);
        plan.active = false;
        emit PlanDeactivated(planId);
    }

    // ---------------------------------------------------------- subscribing

    /// @notice Subscribes the caller to a plan. Without a trial the first period is charged
    /// now, from the caller's allowance to this contract.
    /// @param planId The plan.
    /// @param maxAmountPerPeriod Most the caller allows to be charged per period, in token
    /// base units (at least the plan price, and above 0).
    /// @return subscriptionId Id of the new subscription.
    function subscribe(uint256 planId, uint256 maxAmountPerPeriod)
        external
        whenNotPaused
        nonReentrant
        returns (uint256 subscriptionId)
    {
        return _subscribe(msg.sender, planId, maxAmountPerPeriod);
    }

    /// @notice Like `subscribe`, with an EIP-2612 permit for the allowance in the same transaction.
    /// @param planId The plan.
    /// @param maxAmountPerPeriod Spending cap per period, in token base units.
    /// @param permitValue Allowance granted by the permit, in token base units.
    /// @param deadline Permit deadline, in unix seconds.
    /// @param v Permit signature `v`.
    /// @param r Permit signature `r`.
    /// @param s Permit signature `s`.
    /// @return subscriptionId Id of the new subscription.
    function subscribeWithPermit(
        uint256 planId,
        uint256 maxAmountPerPeriod,
        uint256 permitValue,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external whenNotPaused nonReentrant returns (uint256 subscriptionId) {
        _tryPermit(IERC20(_existingPlan(planId).token), msg.sender, permitValue, deadline, v, r, s);
        return _subscribe(msg.sender, planId, maxAmountPerPeriod);
    }

    /// @notice Subscribes `intent.subscriber` on terms it signed (EIP-712; EIP-1271 for
    /// contract wallets). Anyone may submit; the subscriber pays, from its allowance. An intent
    /// works once (its nonce), on this chain and this contract only (the EIP-712 domain).
    /// @param intent The signed terms.
    /// @param signature The subscriber's signature over `hashSubscriptionIntent(intent)`.
    /// @return subscriptionId Id of the new subscription.
    function subscribeWithSignature(SubscriptionIntent calldata intent, bytes calldata signature)
        external
        whenNotPaused
        nonReentrant
        returns (uint256 subscriptionId)
    {
        if (block.timestamp > intent.deadline) revert IntentExpired(intent.deadline, block.timestamp);
        if (!SignatureChecker.isValidSignatureNowCalldata(intent.subscriber, hashSubscriptionIntent(intent), signature)) {
            revert InvalidSignature(intent.subscriber);
        }
        _useCheckedNonce(intent.subscriber, intent.nonce);
        return _subscribe(intent.subscriber, intent.planId, intent.maxAmountPerPeriod);
    }

    /// @notice Invalidates every intent the caller signed and nobody submitted yet (moves its
    /// nonce on by one).
    function revokeIntents() external {
        uint256 revoked = _useNonce(msg.sender);
        emit IntentsRevoked(msg.sender, revoked);
    }

    // -------------------------------------------------------------- charging

    /// @notice Charges the period that is due. Reverts if nothing is due; a charge that cannot
    /// be collected does not revert: it emits `ChargeFailed` and marks the subscription past due.
    /// @param subscriptionId The subscription.
    /// @return charged True when the period was paid.
    function charge(uint256 subscriptionId) external whenNotPaused nonReentrant returns (bool charged) {
        Subscription storage sub = _subscriptions[subscriptionId];
        if (sub.state == SubscriptionState.None) revert SubscriptionNotFound(subscriptionId);
        Plan storage plan = _plans[sub.planId];
        (bool chargeable,) = _checkDue(subscriptionId, sub, plan, true);
        if (!chargeable) return false;
        return _collectPeriod(subscriptionId, sub, plan);
    }

    /// @notice Charges every subscription in `subscriptionIds` that is due. Subscriptions not
    /// due, no longer live or past their grace period are passed over (`ChargeSkipped`);
    /// failed collections emit `ChargeFailed`. Never reverts for one subscription's sake.
    /// @param subscriptionIds The subscriptions to charge.
    /// @return chargedCount How many periods were paid.
    function chargeBatch(uint256[] calldata subscriptionIds)
        external
        whenNotPaused
        nonReentrant
        returns (uint256 chargedCount)
    {
        uint256 length = subscriptionIds.length;
        for (uint256 i; i < length;) {
            uint256 subscriptionId = subscriptionIds[i];
            Subscription storage sub = _subscriptions[subscriptionId];
            if (sub.state == SubscriptionState.None) {
                emit ChargeSkipped(subscriptionId, ChargeSkipReason.NotFound);
            } else {
                Plan storage plan = _plans[sub.planId];
                (bool chargeable, ChargeSkipReason reason) = _checkDue(subscriptionId, sub, plan, false);
                if (!chargeable) emit ChargeSkipped(subscriptionId, reason);
                else if (_collectPeriod(subscriptionId, sub, plan)) ++chargedCount;
            }
            // The loop index is bounded by the calldata array length, far below 2**256.
            unchecked {
                ++i;
            }
        }
    }

    // ------------------------------------------------------------------ usage

    /// @notice Reports usage of a metered subscription, billed with its next charge (for a
    /// subscription set to end, the final one). Open to the plan's merchant and its operators.
    /// Each `usageRecordId` works once per merchant, so a report sent twice is refused rather
    /// than billed twice. Refused too when the next charge would exceed the subscriber's cap.
    /// @param subscriptionId The subscription.
    /// @param units Units used (at least 1).
    /// @param usageRecordId Merchant-unique id of this record (e.g. a hash of the merchant's own id).
    function reportUsage(uint256 subscriptionId, uint256 units, bytes32 usageRecordId)
        external
        whenNotPaused
        nonReentrant
    {
        Subscription storage sub = _subscriptions[subscriptionId];
        SubscriptionStatus status = _statusOf(sub);
        if (status == SubscriptionStatus.None) revert SubscriptionNotFound(subscriptionId);
        uint256 planId = sub.planId;
        Plan storage plan = _plans[planId];
        address merchant = plan.merchant;
        _requireMerchantOrOperator(merchant);
        if (plan.unitPrice == 0) revert PlanNotMetered(planId);
        if (status == SubscriptionStatus.Canceled || status == SubscriptionStatus.Lapsed) {
            revert SubscriptionNotLive(subscriptionId, status);
        }
        // A resent record is recognised as such before anything else is judged.
        bytes32 key = keccak256(abi.encode(merchant, usageRecordId));
        if (_usageRecords[key]) revert DuplicateUsageRecord(merchant, usageRecordId);
        uint256 unbilled = sub.usageUnits + units;
        if (units == 0 || unbilled > type(uint64).max) revert InvalidUsage(units);
        // The cap bounds the next charge before any credit: what the subscriber agreed to.
        // (A subscription set to end is charged its usage only, so this is conservative.)
        uint256 nextAmount = plan.price + _overageOf(unbilled, plan);
        uint256 cap = sub.maxAmountPerPeriod;
        if (nextAmount > cap) revert UsageExceedsCap(subscriptionId, nextAmount, cap);

        _usageRecords[key] = true;
        sub.usageUnits = uint64(unbilled);
        emit UsageReported(subscriptionId, usageRecordId, units, unbilled, sub.paidThrough);
    }

    // ------------------------------------------------------------ plan change

    /// @notice Moves the caller's subscription to another plan of the same merchant and token.
    /// The billing anchor is kept: the rest of the current period is valued under both plans
    /// (pro rata of time); an upgrade pays the difference now, together with any unbilled
    /// usage of the old plan; a downgrade keeps the difference as credit for the next charges.
    /// @param subscriptionId The subscription (caller must be its subscriber).
    /// @param newPlanId The plan to move to.
    /// @param maxAmountPerPeriod The new spending cap per period, in token base units.
    function changePlan(uint256 subscriptionId, uint256 newPlanId, uint256 maxAmountPerPeriod)
        external
        whenNotPaused
        nonReentrant
    {
        Subscription storage sub = _subscriptions[subscriptionId];
        (uint256 oldPlanId, Plan storage newPlan) = _checkPlanChange(subscriptionId, sub, newPlanId, maxAmountPerPeriod);
        (uint256 charged, uint256 credit) =
            _prorate(sub, _plans[oldPlanId], newPlan, sub.paidThrough - block.timestamp);
        if (charged > maxAmountPerPeriod) revert ChargeAboveCap(charged, maxAmountPerPeriod);

        sub.planId = uint40(newPlanId);
        sub.maxAmountPerPeriod = uint96(maxAmountPerPeriod);
        sub.credit = SafeCast.toUint96(credit);
        sub.usageUnits = 0;
        uint8 flags = sub.flags & ~_FLAGS_WITH_DETAILS;
        if (newPlan.unitPrice != 0) flags |= _FLAG_METERED;
        if (credit != 0) flags |= _FLAG_HAS_CREDIT;
        sub.flags = flags;

        uint256 fee = _feeOf(charged);
        if (charged != 0) _collect(IERC20(newPlan.token), sub.subscriber, newPlan.merchant, charged, fee);
        emit PlanChanged(subscriptionId, oldPlanId, newPlanId, charged, fee, credit, maxAmountPerPeriod);
    }

    // ------------------------------------------------------ cancel and lapse

    /// @notice Cancels a subscription, at once or at the end of the paid period. Open to the
    /// subscriber, the plan's merchant and the merchant's operators; never blocked by a pause.
    /// Metered usage reported and not yet billed stays billable: the subscription then ends
    /// with one last charge, for that usage only, due when the cancel takes effect.
    /// @param subscriptionId The subscription.
    /// @param atPeriodEnd True to let the paid period run out, false to stop now.
    function cancel(uint256 subscriptionId, bool atPeriodEnd) external nonReentrant {
        Subscription storage sub = _subscriptions[subscriptionId];
        SubscriptionStatus status = _statusOf(sub);
        if (status == SubscriptionStatus.None) revert SubscriptionNotFound(subscriptionId);
        if (msg.sender != sub.subscriber && !_isMerchantOrOperator(_plans[sub.planId].merchant, msg.sender)) {
            revert NotSubscriberOrMerchant(subscriptionId, msg.sender);
        }
        if (status == SubscriptionStatus.Canceled || status == SubscriptionStatus.Lapsed) {
            revert SubscriptionNotLive(subscriptionId, status);
        }
        uint8 flags = sub.flags;
        uint256 dueAt = sub.paidThrough;
        if (flags & _FLAG_CANCEL_AT_PERIOD_END != 0 && atPeriodEnd) {
            revert CancelAlreadyScheduled(subscriptionId, dueAt);
        }
        // A past-due subscription has nothing paid left to run out: it stops now either way.
        if (atPeriodEnd && block.timestamp < dueAt) {
            sub.flags = flags | _FLAG_CANCEL_AT_PERIOD_END;
            emit SubscriptionCanceled(subscriptionId, msg.sender, dueAt, true);
        } else if (flags & _FLAG_METERED != 0 && sub.usageUnits != 0) {
            if (block.timestamp < dueAt) sub.paidThrough = uint40(block.timestamp);
            sub.flags = flags | _FLAG_CANCEL_AT_PERIOD_END;
            emit SubscriptionCanceled(subscriptionId, msg.sender, block.timestamp, false);
        } else {
            sub.state = SubscriptionState.Canceled;
            emit SubscriptionCanceled(subscriptionId, msg.sender, block.timestamp, false);
        }
    }

    /// @notice Ends a past-due subscription whose grace period is over. Anyone may call it.
    /// @param subscriptionId The subscription.
    function finalizeLapse(uint256 subscriptionId) external {
        Subscription storage sub = _subscriptions[subscriptionId];
        SubscriptionStatus status = _statusOf(sub);
        if (status == SubscriptionStatus.None) revert SubscriptionNotFound(subscriptionId);
        if (sub.state != SubscriptionState.Live || status == SubscriptionStatus.Canceled) {
            revert SubscriptionNotLive(subscriptionId, status);
        }
        if (status != SubscriptionStatus.Lapsed) revert GracePeriodRunning(subscriptionId, _graceEnd(sub));
        sub.state = SubscriptionState.Lapsed;
        emit SubscriptionLapsed(subscriptionId, _graceEnd(sub));
    }

    // ------------------------------------------------------------------ views

    /// @notice The terms of a plan.
    /// @param planId The plan.
    /// @return The plan (all fields zero if it does not exist).
    function getPlan(uint256 planId) external view returns (Plan memory) {
        return _plans[planId];
    }

    /// @notice A subscription as stored.
    /// @param subscriptionId The subscription.
    /// @return The subscription (all fields zero if it does not exist).
    function getSubscription(uint256 subscriptionId) external view returns (Subscription memory) {
        return _subscriptions[subscriptionId];
    }

    /// @notice Number of plans created so far (plan ids run from 1 to this).
    /// @return The count.
    function planCount() external view returns (uint256) {
        return _planCount;
    }

    /// @notice Number of subscriptions created so far (ids run from 1 to this).
    /// @return The count.
    function subscriptionCount() external view returns (uint256) {
        return _subscriptionCount;
    }

    /// @notice Status of a subscription at the current block time.
    /// @param subscriptionId The subscription.
    /// @return The derived status.
    function statusOf(uint256 subscriptionId) external view returns (SubscriptionStatus) {
        return _statusOf(_subscriptions[subscriptionId]);
    }

    /// @notice Whether the subscriber is entitled to the service now: in trial, paid, or past
    /// due within the grace period.
    /// @param subscriptionId The subscription.
    /// @return True while trialing, active or past due.
    function isActive(uint256 subscriptionId) external view returns (bool) {
        SubscriptionStatus status = _statusOf(_subscriptions[subscriptionId]);
        return status == SubscriptionStatus.Trialing || status == SubscriptionStatus.Active
            || status == SubscriptionStatus.PastDue;
    }

    /// @notice Time up to which the subscription is paid (or in trial), in unix seconds.
    /// @param subscriptionId The subscription.
    /// @return The paid-through time (0 if it does not exist).
    function paidThrough(uint256 subscriptionId) external view returns (uint256) {
        return _subscriptions[subscriptionId].paidThrough;
    }

    /// @notice When the next charge may be made, in unix seconds (0 when none ever will:
    /// canceled, lapsed, or unknown).
    /// @param subscriptionId The subscription.
    /// @return The due time of the next charge.
    function nextChargeAt(uint256 subscriptionId) external view returns (uint256) {
        Subscription storage sub = _subscriptions[subscriptionId];
        return _hasNextCharge(sub) ? sub.paidThrough : 0;
    }

    /// @notice Amount the next charge will take, in token base units (0 when no charge will
    /// follow): the base price, plus metered usage reported so far, less credit.
    /// @param subscriptionId The subscription.
    /// @return The amount due at `nextChargeAt`.
    function amountDue(uint256 subscriptionId) external view returns (uint256) {
        Subscription storage sub = _subscriptions[subscriptionId];
        if (!_hasNextCharge(sub)) return 0;
        return _nextCharge(sub, _plans[sub.planId]).amount;
    }

    /// @notice Whether a merchant already reported a usage record id.
    /// @param merchant The merchant.
    /// @param usageRecordId The record id.
    /// @return True when reported.
    function isUsageRecorded(address merchant, bytes32 usageRecordId) external view returns (bool) {
        return _usageRecords[keccak256(abi.encode(merchant, usageRecordId))];
    }

    /// @notice The EIP-712 digest a subscriber signs for `subscribeWithSignature`.
    /// @param intent The terms.
    /// @return The digest.
    function hashSubscriptionIntent(SubscriptionIntent calldata intent) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    _INTENT_TYPEHASH,
                    intent.subscriber,
                    intent.planId,
                    intent.maxAmountPerPeriod,
                    intent.nonce,
                    intent.deadline
                )
            )
        );
    }

    // -------------------------------------------------------------- internals

    function _existingPlan(uint256 planId) private view returns (Plan storage plan) {
        plan = _plans[planId];
        if (plan.merchant == address(0)) revert PlanNotFound(planId);
    }

    function _createPlan(
        IERC20 token,
        uint256 price,
        uint256 period,
        uint256 trialPeriod,
        uint256 gracePeriod,
        uint256 unitPrice,
        uint256 includedUnits
    ) private returns (uint256 planId) {
        if (address(token) == address(0) || address(token).code.length == 0) revert InvalidToken(address(token));
        if (price > type(uint96).max) revert InvalidPrice(price, type(uint96).max);
        if (period < MIN_PERIOD || period > MAX_PERIOD) revert InvalidPeriod(period, MIN_PERIOD, MAX_PERIOD);
        if (trialPeriod > MAX_PERIOD) revert InvalidPeriod(trialPeriod, 0, MAX_PERIOD);
        if (gracePeriod < MIN_GRACE_PERIOD || gracePeriod > MAX_PERIOD) {
            revert InvalidPeriod(gracePeriod, MIN_GRACE_PERIOD, MAX_PERIOD);
        }

        planId = ++_planCount;
        _plans[planId] = Plan({
            merchant: msg.sender,
            period: uint32(period),
            trialPeriod: uint32(trialPeriod),
            gracePeriod: uint32(gracePeriod),
            token: address(token),
            price: uint96(price),
            unitPrice: uint96(unitPrice),
            includedUnits: uint64(includedUnits),
            active: true
        });
        emit PlanCreated(
            planId, msg.sender, address(token), price, period, trialPeriod, gracePeriod, unitPrice, includedUnits
        );
    }

    function _subscribe(address subscriber, uint256 planId, uint256 maxAmountPerPeriod)
        private
        returns (uint256 subscriptionId)
    {
        Plan storage plan = _existingPlan(planId);
        if (!plan.active) revert PlanInactive(planId);
        uint256 price = plan.price;
        if (maxAmountPerPeriod == 0 || maxAmountPerPeriod < price || maxAmountPerPeriod > type(uint96).max) {
            revert CapBelowPrice(maxAmountPerPeriod, price);
        }

        subscriptionId = ++_subscriptionCount;
        bool trial = plan.trialPeriod != 0;
        uint256 firstPaidThrough = block.timestamp + (trial ? plan.trialPeriod : plan.period);
        uint8 flags = trial ? _FLAG_IN_TRIAL : 0;
        if (plan.unitPrice != 0) flags |= _FLAG_METERED;
        _subscriptions[subscriptionId] = Subscription({
            subscriber: subscriber,
            paidThrough: SafeCast.toUint40(firstPaidThrough),
            planId: uint40(planId),
            state: SubscriptionState.Live,
            flags: flags,
            maxAmountPerPeriod: uint96(maxAmountPerPeriod),
            credit: 0,
            usageUnits: 0
        });
        emit Subscribed(subscriptionId, planId, subscriber, maxAmountPerPeriod, block.timestamp, firstPaidThrough);

        if (!trial) {
            uint256 fee = _feeOf(price);
            if (price != 0) _collect(IERC20(plan.token), subscriber, plan.merchant, price, fee);
            emit Charged(subscriptionId, block.timestamp, firstPaidThrough, price, fee);
        }
    }

    /// @dev Whether the subscription's next charge may be made now. With `strict` the
    /// reasons against revert with their custom error; otherwise they are returned.
    function _checkDue(uint256 subscriptionId, Subscription storage sub, Plan storage plan, bool strict)
        private
        view
        returns (bool, ChargeSkipReason)
    {
        uint256 dueAt = sub.paidThrough;
        if (sub.state != SubscriptionState.Live) {
            if (strict) revert SubscriptionNotLive(subscriptionId, _statusOf(sub));
            return (false, ChargeSkipReason.NotLive);
        }
        if (sub.flags & _FLAG_CANCEL_AT_PERIOD_END != 0) {
            // Ends when the paid period does; only unbilled usage can still be charged then.
            if (block.timestamp < dueAt) {
                if (strict) revert CancelAlreadyScheduled(subscriptionId, dueAt);
                return (false, ChargeSkipReason.NotLive);
            }
            if (!_hasUnbilledUsage(sub)) {
                if (strict) revert SubscriptionNotLive(subscriptionId, SubscriptionStatus.Canceled);
                return (false, ChargeSkipReason.NotLive);
            }
        } else if (block.timestamp < dueAt) {
            if (strict) revert ChargeNotDue(subscriptionId, dueAt, block.timestamp);
            return (false, ChargeSkipReason.NotDue);
        }
        uint256 graceEnd = dueAt + plan.gracePeriod;
        if (block.timestamp >= graceEnd) {
            if (strict) revert GracePeriodExpired(subscriptionId, graceEnd);
            return (false, ChargeSkipReason.GraceExpired);
        }
        return (true, ChargeSkipReason.NotDue);
    }

    /// @dev Collects one period and moves the schedule on by exactly one period, or records
    /// the failure. The caller has checked that the charge is due. Plain subscriptions (no
    /// usage, no credit, not ending) take this short path; the others `_collectDetailed`.
    function _collectPeriod(uint256 subscriptionId, Subscription storage sub, Plan storage plan)
        private
        returns (bool)
    {
        uint8 flags = sub.flags;
        if (flags & (_FLAGS_WITH_DETAILS | _FLAG_CANCEL_AT_PERIOD_END) != 0) {
            return _collectDetailed(subscriptionId, sub, plan, flags);
        }
        uint256 amount = plan.price;
        uint256 fee = _feeOf(amount);
        if (_tryCollect(IERC20(plan.token), sub.subscriber, plan.merchant, amount, fee)) {
            _advance(subscriptionId, sub, plan, flags, amount, fee);
            return true;
        }
        _recordFailure(subscriptionId, sub, plan, flags, amount);
        return false;
    }

    /// @dev The charge of a subscription with usage or credit, or ending: base price in
    /// advance (none when ending), usage in arrears, less credit.
    function _collectDetailed(uint256 subscriptionId, Subscription storage sub, Plan storage plan, uint8 flags)
        private
        returns (bool)
    {
        ChargeAmount memory due = _nextCharge(sub, plan);
        uint256 fee = _feeOf(due.amount);
        if (due.amount != 0 && !_tryCollect(IERC20(plan.token), sub.subscriber, plan.merchant, due.amount, fee)) {
            _recordFailure(subscriptionId, sub, plan, flags, due.amount);
            return false;
        }
        sub.usageUnits = 0;
        sub.credit = uint96(due.creditLeft);
        if (due.creditLeft == 0) flags &= ~_FLAG_HAS_CREDIT;
        if (due.units != 0) emit UsageCharged(subscriptionId, due.units, due.overage);
        if (due.creditApplied != 0) emit CreditApplied(subscriptionId, due.creditApplied, due.creditLeft);
        _advance(subscriptionId, sub, plan, flags, due.amount, fee);
        return true;
    }

    /// @dev Books a paid charge: the next period starts where the paid one ended, however
    /// late the charge came (fixed schedule); an ending subscription ends.
    function _advance(
        uint256 subscriptionId,
        Subscription storage sub,
        Plan storage plan,
        uint8 flags,
        uint256 amount,
        uint256 fee
    ) private {
        uint256 dueAt = sub.paidThrough;
        uint256 nextDue = dueAt;
        if (flags & _FLAG_CANCEL_AT_PERIOD_END != 0) {
            sub.state = SubscriptionState.Canceled;
        } else {
            // A uint40 of seconds lasts until the year 36812.
            nextDue = dueAt + plan.period;
            sub.paidThrough = uint40(nextDue);
        }
        uint8 newFlags = flags & ~(_FLAG_PAST_DUE | _FLAG_IN_TRIAL);
        if (newFlags != sub.flags) sub.flags = newFlags;
        emit Charged(subscriptionId, dueAt, nextDue, amount, fee);
    }

    function _recordFailure(
        uint256 subscriptionId,
        Subscription storage sub,
        Plan storage plan,
        uint8 flags,
        uint256 amount
    ) private {
        if (flags & _FLAG_PAST_DUE == 0) sub.flags = flags | _FLAG_PAST_DUE;
        IERC20 token = IERC20(plan.token);
        emit ChargeFailed(subscriptionId, sub.paidThrough, amount, _failureReason(token, sub.subscriber, amount));
    }

    /// @dev The next charge: base price (none when the subscription is ending), plus the
    /// overage of the usage reported since the last charge, less credit.
    function _nextCharge(Subscription storage sub, Plan storage plan) private view returns (ChargeAmount memory due) {
        uint8 flags = sub.flags;
        due.amount = flags & _FLAG_CANCEL_AT_PERIOD_END != 0 ? 0 : plan.price;
        if (flags & _FLAGS_WITH_DETAILS == 0) return due;
        if (flags & _FLAG_METERED != 0) {
            due.units = sub.usageUnits;
            due.overage = _overageOf(due.units, plan);
            due.amount += due.overage;
        }
        uint256 credit = sub.credit;
        due.creditApplied = credit < due.amount ? credit : due.amount;
        // creditApplied <= amount and <= credit by the line above.
        unchecked {
            due.amount -= due.creditApplied;
            due.creditLeft = credit - due.creditApplied;
        }
    }

    function _overageOf(uint256 units, Plan storage plan) private view returns (uint256) {
        uint256 included = plan.includedUnits;
        return units > included ? (units - included) * plan.unitPrice : 0;
    }

    /// @dev Everything that must hold for the caller to move `sub` to `newPlanId`.
    function _checkPlanChange(
        uint256 subscriptionId,
        Subscription storage sub,
        uint256 newPlanId,
        uint256 maxAmountPerPeriod
    ) private view returns (uint256 oldPlanId, Plan storage newPlan) {
        SubscriptionStatus status = _statusOf(sub);
        if (status == SubscriptionStatus.None) revert SubscriptionNotFound(subscriptionId);
        if (msg.sender != sub.subscriber) revert NotSubscriber(subscriptionId, msg.sender);
        if (sub.state != SubscriptionState.Live) revert SubscriptionNotLive(subscriptionId, status);
        uint256 dueAt = sub.paidThrough;
        if (sub.flags & _FLAG_CANCEL_AT_PERIOD_END != 0) revert CancelAlreadyScheduled(subscriptionId, dueAt);
        if (block.timestamp >= dueAt) revert PlanChangeWhileDue(subscriptionId, dueAt);

        oldPlanId = sub.planId;
        Plan storage oldPlan = _plans[oldPlanId];
        newPlan = _existingPlan(newPlanId);
        if (newPlanId == oldPlanId || newPlan.merchant != oldPlan.merchant || newPlan.token != oldPlan.token) {
            revert PlanChangeNotAllowed(oldPlanId, newPlanId);
        }
        if (!newPlan.active) revert PlanInactive(newPlanId);
        uint256 newPrice = newPlan.price;
        if (maxAmountPerPeriod == 0 || maxAmountPerPeriod < newPrice || maxAmountPerPeriod > type(uint96).max) {
            revert CapBelowPrice(maxAmountPerPeriod, newPrice);
        }
    }

    /// @dev What moving to `newPlan` costs now, or leaves as credit, for the `remaining`
    /// seconds of the paid period (nothing was paid for a trial, so nothing is prorated then).
    function _prorate(Subscription storage sub, Plan storage oldPlan, Plan storage newPlan, uint256 remaining)
        private
        view
        returns (uint256 charged, uint256 credit)
    {
        // In a trial nothing was paid, so only usage is owed.
        uint256 owed = 0;
        uint256 available = sub.credit;
        if (sub.flags & _FLAG_IN_TRIAL == 0) {
            owed = (uint256(newPlan.price) * remaining) / newPlan.period;
            available += (uint256(oldPlan.price) * remaining) / oldPlan.period;
        }
        if (sub.flags & _FLAG_METERED != 0) owed += _overageOf(sub.usageUnits, oldPlan);
        // Each branch subtracts the smaller from the larger.
        unchecked {
            if (owed > available) charged = owed - available;
            else credit = available - owed;
        }
    }

    function _hasUnbilledUsage(Subscription storage sub) private view returns (bool) {
        return sub.flags & _FLAG_METERED != 0 && sub.usageUnits != 0;
    }

    /// @dev Whether a charge will still fall due: live, not lapsed, and not ending (unless it
    /// ends with unbilled usage).
    function _hasNextCharge(Subscription storage sub) private view returns (bool) {
        if (sub.state != SubscriptionState.Live || block.timestamp >= _graceEnd(sub)) return false;
        return sub.flags & _FLAG_CANCEL_AT_PERIOD_END == 0 || _hasUnbilledUsage(sub);
    }

    function _failureReason(IERC20 token, address subscriber, uint256 amount)
        private
        view
        returns (ChargeFailureReason)
    {
        if (token.allowance(subscriber, address(this)) < amount) return ChargeFailureReason.InsufficientAllowance;
        if (token.balanceOf(subscriber) < amount) return ChargeFailureReason.InsufficientBalance;
        return ChargeFailureReason.TransferRejected;
    }

    function _graceEnd(Subscription storage sub) private view returns (uint256) {
        return uint256(sub.paidThrough) + _plans[sub.planId].gracePeriod;
    }

    function _statusOf(Subscription storage sub) private view returns (SubscriptionStatus) {
        SubscriptionState state = sub.state;
        if (state == SubscriptionState.None) return SubscriptionStatus.None;
        if (state == SubscriptionState.Canceled) return SubscriptionStatus.Canceled;
        if (state == SubscriptionState.Lapsed) return SubscriptionStatus.Lapsed;
        uint256 dueAt = sub.paidThrough;
        uint8 flags = sub.flags;
        if (block.timestamp < dueAt) {
            return flags & _FLAG_IN_TRIAL != 0 ? SubscriptionStatus.Trialing : SubscriptionStatus.Active;
        }
        if (flags & _FLAG_CANCEL_AT_PERIOD_END != 0) return SubscriptionStatus.Canceled;
        // Due and unpaid: past due until the grace period ends, lapsed from then on (the
        // stored state follows once someone calls `finalizeLapse`).
        if (block.timestamp >= _graceEnd(sub)) return SubscriptionStatus.Lapsed;
        return SubscriptionStatus.PastDue;
    }
}
