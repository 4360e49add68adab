package policy

import (
	"errors"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1/validation"
)

// AcceptedCondition returns the Accepted condition for a policy of the
// given generation, from the result of Validate or UpsertPolicy: True, or
// False with reason Invalid, the problems, and what the policy does
// meanwhile (validation.AcceptedCondition).
func AcceptedCondition(generation int64, err error) metav1.Condition {
	if err == nil {
		return validation.AcceptedCondition(generation, nil)
	}
	var ie *InvalidPolicyError
	if errors.As(err, &ie) {
		return validation.AcceptedCondition(generation, ie.Errs)
	}
	return metav1.Condition{
		Type:               v1alpha1.ConditionAccepted,
		Status:             metav1.ConditionFalse,
		Reason:             v1alpha1.ReasonInvalid,
		Message:            validation.InvalidMessage(err.Error()),
		ObservedGeneration: generation,
	}
}

// SetAccepted records the result of Validate or UpsertPolicy for p's
// current generation in its status, and reports whether the status
// changed (and so needs writing).
func SetAccepted(p *v1alpha1.MeshNetworkPolicy, err error) bool {
	return validation.SetCondition(p, AcceptedCondition(p.Generation, err))
}
