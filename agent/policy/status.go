package policy

import (
	"errors"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// AcceptedCondition returns the Accepted condition for a policy of the
// given generation, from the result of Validate or UpsertPolicy: True, or
// False with reason Invalid, the problems, and what the policy does
// meanwhile.
func AcceptedCondition(generation int64, err error) metav1.Condition {
	c := metav1.Condition{
		Type:               v1alpha1.ConditionAccepted,
		Status:             metav1.ConditionTrue,
		Reason:             v1alpha1.ReasonAccepted,
		Message:            "the policy is in force",
		ObservedGeneration: generation,
	}
	if err == nil {
		return c
	}
	c.Status = metav1.ConditionFalse
	c.Reason = v1alpha1.ReasonInvalid
	var ie *InvalidPolicyError
	if errors.As(err, &ie) {
		c.Message = ie.Detail() + "; " + ie.consequence()
	} else {
		c.Message = err.Error()
	}
	if len(c.Message) > maxConditionMessage {
		c.Message = c.Message[:maxConditionMessage-3] + "..."
	}
	return c
}

// maxConditionMessage is metav1.Condition's limit on Message.
const maxConditionMessage = 32768

// consequence says what an invalid policy does until it is fixed.
func (e *InvalidPolicyError) consequence() string {
	return "until this is fixed the policy allows nothing, and the endpoints a valid endpointSelector selects deny cross-cluster traffic in the directions the policy has rules for"
}

// SetAccepted records the result of Validate or UpsertPolicy for p's
// current generation in its status, and reports whether the status
// changed (and so needs writing).
func SetAccepted(p *v1alpha1.MeshNetworkPolicy, err error) bool {
	changed := meta.SetStatusCondition(&p.Status.Conditions, AcceptedCondition(p.Generation, err))
	if p.Status.ObservedGeneration != p.Generation {
		p.Status.ObservedGeneration = p.Generation
		changed = true
	}
	return changed
}
