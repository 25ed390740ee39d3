package review

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policysource"
)

// ClusterExceptions is the ExceptionSource of the CRD policy source:
// BuildPolicyExceptions, which it revokes by deleting them, and the
// exceptions of ClusterBuildPolicies, which it only lists.
type ClusterExceptions struct {
	Client dynamic.Interface
}

// listPage is how many resources one list call asks for.
const listPage = 500

// Exceptions implements ExceptionSource.
func (c *ClusterExceptions) Exceptions(ctx context.Context) ([]Exception, error) {
	var out []Exception
	err := c.list(ctx, v1alpha1.ExceptionResource(), func(u *unstructured.Unstructured) {
		x := Exception{Source: SourceResource, Namespace: u.GetNamespace(), Name: u.GetName(), UID: string(u.GetUID()),
			Recorded: u.GetNamespace() + "/" + u.GetName(), Revocable: true}
		var spec v1alpha1.ExceptionSpec
		if err := decodeField(u, "spec", &spec); err != nil {
			x.Problem = "its spec does not decode: " + err.Error()
		}
		x.Images, x.Reason, x.ApprovedBy = spec.Images, spec.Reason, spec.ApprovedBy
		if x.Problem == "" {
			x.Expires, x.Problem = parseExpires(spec.Expires)
		}
		a := u.GetAnnotations()
		x.GrantedBy, x.Decision = a[AnnotationGrantedBy], a[AnnotationDecision]
		x.GrantedAt, _ = time.Parse(time.RFC3339, a[AnnotationGrantedAt])
		out = append(out, x)
	})
	if err != nil {
		return nil, err
	}
	err = c.list(ctx, v1alpha1.PolicyResource(), func(u *unstructured.Unstructured) {
		var spec struct {
			Exceptions []policy.Exception `json:"exceptions"`
		}
		if decodeField(u, "spec", &spec) != nil {
			return // the policy source reports it in the policy's status
		}
		p, err := policy.Compile(policy.Spec{Exceptions: spec.Exceptions})
		if err != nil {
			for i, e := range spec.Exceptions {
				out = append(out, Exception{Source: SourcePolicy, Policy: u.GetName(), Name: e.Name, Recorded: e.Name,
					Images: e.Images, Reason: e.Reason, ApprovedBy: e.ApprovedBy, Problem: "the policy's exceptions do not compile: " + err.Error()})
				if e.Name == "" {
					out[len(out)-1].Name = fmt.Sprintf("exceptions[%d]", i)
				}
			}
			return
		}
		for _, x := range exceptionsOfPolicy(p, SourcePolicy) {
			x.Policy = u.GetName()
			out = append(out, x)
		}
	})
	return out, err
}

func (c *ClusterExceptions) list(ctx context.Context, res schema.GroupVersionResource, each func(*unstructured.Unstructured)) error {
	opts := metav1.ListOptions{Limit: listPage}
	for {
		l, err := c.Client.Resource(res).List(ctx, opts)
		if err != nil {
			return fmt.Errorf("listing %s: %w", res.Resource, err)
		}
		for i := range l.Items {
			each(&l.Items[i])
		}
		if opts.Continue = l.GetContinue(); opts.Continue == "" {
			return nil
		}
	}
}

// Revoke implements ExceptionSource: it deletes the BuildPolicyException,
// if it is still the one listed (its UID).
func (c *ClusterExceptions) Revoke(ctx context.Context, ref ExceptionRef) error {
	if ref.Source != SourceResource {
		return fmt.Errorf("%s exceptions are not revoked here, only BuildPolicyExceptions: %w", ref.Source, ErrNotRevocable)
	}
	opts := metav1.DeleteOptions{}
	if ref.UID != "" {
		uid := types.UID(ref.UID)
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err := c.Client.Resource(v1alpha1.ExceptionResource()).Namespace(ref.Namespace).Delete(ctx, ref.Name, opts)
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("BuildPolicyException %s/%s: %w", ref.Namespace, ref.Name, ErrExceptionGone)
	case apierrors.IsConflict(err):
		return fmt.Errorf("BuildPolicyException %s/%s was replaced since the page was shown: %w", ref.Namespace, ref.Name, ErrExceptionGone)
	case err != nil:
		return fmt.Errorf("deleting BuildPolicyException %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	return nil
}

// decodeField decodes the field of u into v, by way of JSON, as the
// policy source reads it.
func decodeField(u *unstructured.Unstructured, field string, v any) error {
	raw, err := json.Marshal(u.Object[field])
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}

// FileExceptions is the ExceptionSource of the file policy source: the
// policy file's own exceptions, which it only lists, and those of the
// exceptions file, which it revokes by removing them from the file.
type FileExceptions struct {
	// File is the exceptions file, or nil without one.
	File *policysource.ExceptionFile
	// Policy returns the policy in force, or nil.
	Policy func() *policy.Policy
}

// Exceptions implements ExceptionSource.
func (f *FileExceptions) Exceptions(ctx context.Context) ([]Exception, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []Exception
	if f.Policy != nil {
		if p := f.Policy(); p != nil {
			out = append(out, exceptionsOfPolicy(p, SourcePolicyFile)...)
		}
	}
	if f.File != nil {
		out = append(out, fileExceptions(f.File.List())...)
	}
	return out, nil
}

// Revoke implements ExceptionSource.
func (f *FileExceptions) Revoke(ctx context.Context, ref ExceptionRef) error {
	if ref.Source != SourceFile || f.File == nil {
		return fmt.Errorf("%s exceptions are not revoked here, only those of the exceptions file: %w", ref.Source, ErrNotRevocable)
	}
	err := f.File.Revoke(ctx, ref.Namespace, ref.Name)
	if errors.Is(err, policysource.ErrNoSuchException) {
		return fmt.Errorf("%w: %w", ErrExceptionGone, err)
	}
	return err
}

// fileExceptions are the exceptions of an exceptions file.
func fileExceptions(entries []v1alpha1.ListedException) []Exception {
	var out []Exception
	for i, e := range entries {
		name := e.Name
		if name == "" {
			name = fmt.Sprintf("exceptions[%d]", i)
		}
		x := Exception{Source: SourceFile, Namespace: e.Namespace, Name: name, Recorded: e.Namespace + "/" + name,
			Images: e.Images, Reason: e.Reason, ApprovedBy: e.ApprovedBy, GrantedBy: e.GrantedBy, Decision: e.Decision,
			Revocable: e.Name != "" && nameRE.MatchString(e.Name)}
		x.GrantedAt, _ = time.Parse(time.RFC3339, e.GrantedAt)
		x.Expires, x.Problem = parseExpires(e.Expires)
		out = append(out, x)
	}
	return out
}
